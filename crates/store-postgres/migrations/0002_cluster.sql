-- Scale-out: which process applies the transitions of each shard's runs, and which
-- processes are alive. Version 2; never edit an applied migration.

-- `epoch` moves up by one each time a shard changes hands; commits carry the epoch they
-- were made under and are refused when it is no longer the row's (fencing). A commit
-- reads the rows it is fenced by `FOR SHARE`, so a takeover waits for it to finish.
CREATE TABLE shard_leases (
    shard BIGINT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE members (
    id TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    addr TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
