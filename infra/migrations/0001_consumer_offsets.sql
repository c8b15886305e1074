-- Offsets of the PostgreSQL projections, written in the same transaction as the rows they
-- change: this table, not Kafka's __consumer_offsets, is where a projection resumes from.
CREATE TABLE consumer_offsets (
    consumer     text    NOT NULL,
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint  NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Event ids a projection has applied: the idempotence guard against repeated derived events.
CREATE TABLE processed_events (
    consumer    text NOT NULL,
    event_id    uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
