"""The hub's schema, as forward-only migrations.

MIGRATIONS[n] takes the database from version n to n + 1. Never edit a released
migration; append a new one. Times are epoch seconds (REAL); the API renders
them as ISO 8601 UTC.
"""

from __future__ import annotations

V1 = (
    """
    CREATE TABLE gateways (
        id                TEXT PRIMARY KEY,
        name              TEXT NOT NULL,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL,
        workspace_root    TEXT,
        agent_api_url     TEXT,
        hostname          TEXT,
        sidecar_version   TEXT,
        openclaw_version  TEXT,
        openclaw_protocol INTEGER,
        gateway_generation INTEGER NOT NULL DEFAULT 0,
        connected         INTEGER NOT NULL DEFAULT 0,
        connected_at      REAL,
        disconnected_at   REAL,
        last_seen_at      REAL,
        reachable         INTEGER,
        unreachable_reason TEXT,
        config_valid      INTEGER,
        config_error      TEXT,
        last_touched_version TEXT,
        -- next command sequence to issue, and the highest the sidecar confirmed
        next_sequence     INTEGER NOT NULL DEFAULT 1,
        acked_sequence    INTEGER NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE TABLE boards (
        id          TEXT PRIMARY KEY,
        gateway_id  TEXT NOT NULL REFERENCES gateways(id),
        name        TEXT NOT NULL,
        slug        TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    )
    """,
    "CREATE INDEX boards_gateway ON boards(gateway_id)",
    """
    CREATE TABLE agents (
        id                    TEXT PRIMARY KEY,
        gateway_id            TEXT NOT NULL REFERENCES gateways(id),
        board_id              TEXT REFERENCES boards(id),
        kind                  TEXT NOT NULL CHECK (kind IN ('worker', 'lead', 'main')),
        gateway_agent_id      TEXT NOT NULL,
        name                  TEXT NOT NULL,
        status                TEXT NOT NULL DEFAULT 'provisioning',
        status_reason         TEXT,
        lifecycle_generation  INTEGER NOT NULL DEFAULT 0,
        wake_attempts         INTEGER NOT NULL DEFAULT 0,
        checkin_deadline_at   REAL,
        last_wake_sent_at     REAL,
        last_seen_at          REAL,
        last_provision_error  TEXT,
        applied_generation    INTEGER NOT NULL DEFAULT 0,
        heartbeat_config      TEXT NOT NULL DEFAULT '{}',
        identity_profile      TEXT NOT NULL DEFAULT '{}',
        created_at            REAL NOT NULL,
        updated_at            REAL NOT NULL,
        UNIQUE (gateway_id, gateway_agent_id)
    )
    """,
    "CREATE INDEX agents_board ON agents(board_id)",
    "CREATE INDEX agents_deadline ON agents(checkin_deadline_at) "
    "WHERE checkin_deadline_at IS NOT NULL",
    # One lead per board and one main agent per gateway, enforced by the database.
    "CREATE UNIQUE INDEX agents_one_lead ON agents(board_id) WHERE kind = 'lead'",
    "CREATE UNIQUE INDEX agents_one_main ON agents(gateway_id) WHERE kind = 'main'",
    """
    CREATE TABLE commands (
        gateway_id  TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
        sequence    INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        agent_id    TEXT,
        generation  INTEGER NOT NULL DEFAULT 0,
        payload     BLOB NOT NULL,
        created_at  REAL NOT NULL,
        acked_at    REAL,
        outcome     TEXT,
        error_code  TEXT,
        error       TEXT,
        run_id      TEXT,
        PRIMARY KEY (gateway_id, sequence)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          REAL NOT NULL,
        kind        TEXT NOT NULL,
        gateway_id  TEXT,
        agent_id    TEXT,
        detail      TEXT NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX events_gateway ON events(gateway_id, id)",
)

# Enrollment: join tokens (only a keyed hash of the secret) and every issued client
# certificate, so deleting a gateway can revoke all of them.
V2 = (
    """
    CREATE TABLE join_tokens (
        token_id    TEXT PRIMARY KEY,
        secret_hmac BLOB NOT NULL,
        gateway_id  TEXT,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        max_uses    INTEGER NOT NULL,
        uses        INTEGER NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE TABLE certificates (
        serial      TEXT PRIMARY KEY,
        gateway_id  TEXT NOT NULL,
        issued_at   REAL NOT NULL,
        not_after   REAL NOT NULL,
        revoked_at  REAL
    )
    """,
    "CREATE INDEX certificates_gateway ON certificates(gateway_id)",
)

# Lifecycle: what the reconciler waits for (phase), its backoff, each agent's heartbeat
# interval (offline after 2x it), template overrides; agent tokens, found by id.
V3 = (
    "ALTER TABLE agents ADD COLUMN phase TEXT NOT NULL DEFAULT 'idle'",
    "ALTER TABLE agents ADD COLUMN delivery_failures INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE agents ADD COLUMN heartbeat_interval_s INTEGER NOT NULL DEFAULT 600",
    "ALTER TABLE agents ADD COLUMN identity_template TEXT",
    "ALTER TABLE agents ADD COLUMN soul_template TEXT",
    "CREATE INDEX agents_gateway ON agents(gateway_id)",
    """
    CREATE TABLE agent_tokens (
        token_id       TEXT PRIMARY KEY,
        agent_id       TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        digest         BLOB NOT NULL,
        sidecar_sha256 BLOB NOT NULL,
        not_after      REAL,
        created_at     REAL NOT NULL
    )
    """,
    "CREATE INDEX agent_tokens_agent ON agent_tokens(agent_id)",
)

# The REST API's resources: the local user (USER.md comes from it), board goals and rules,
# tasks with comments, board webhooks with their stored payloads.
V4 = (
    """
    CREATE TABLE users (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        preferred_name TEXT NOT NULL DEFAULT '',
        pronouns       TEXT NOT NULL DEFAULT '',
        timezone       TEXT NOT NULL DEFAULT '',
        notes          TEXT NOT NULL DEFAULT '',
        context        TEXT NOT NULL DEFAULT '',
        created_at     REAL NOT NULL,
        updated_at     REAL NOT NULL
    )
    """,
    "ALTER TABLE boards ADD COLUMN board_type TEXT NOT NULL DEFAULT 'goal'",
    "ALTER TABLE boards ADD COLUMN objective TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE boards ADD COLUMN success_metrics TEXT NOT NULL DEFAULT 'null'",
    "ALTER TABLE boards ADD COLUMN target_date TEXT",
    "ALTER TABLE boards ADD COLUMN goal_confirmed INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE boards ADD COLUMN require_approval_for_done INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE boards ADD COLUMN require_review_before_done INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE boards ADD COLUMN comment_required_for_review INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE boards ADD COLUMN only_lead_can_change_status INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE boards ADD COLUMN max_agents INTEGER NOT NULL DEFAULT 1",
    # 'deleting' while its agents are removed through their sidecars
    "ALTER TABLE boards ADD COLUMN status TEXT NOT NULL DEFAULT 'active'",
    """
    CREATE TABLE tasks (
        id                TEXT PRIMARY KEY,
        board_id          TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
        title             TEXT NOT NULL,
        description       TEXT NOT NULL DEFAULT '',
        status            TEXT NOT NULL DEFAULT 'inbox'
                          CHECK (status IN ('inbox', 'in_progress', 'review', 'done')),
        priority          TEXT NOT NULL DEFAULT 'medium',
        due_at            REAL,
        assigned_agent_id TEXT REFERENCES agents(id) ON DELETE SET NULL,
        in_progress_at    REAL,
        created_by        TEXT NOT NULL DEFAULT '',
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL
    )
    """,
    "CREATE INDEX tasks_board ON tasks(board_id, status)",
    "CREATE INDEX tasks_agent ON tasks(assigned_agent_id)",
    """
    CREATE TABLE task_comments (
        id          TEXT PRIMARY KEY,
        task_id     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        author_kind TEXT NOT NULL CHECK (author_kind IN ('user', 'agent')),
        author_id   TEXT NOT NULL,
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL
    )
    """,
    "CREATE INDEX task_comments_task ON task_comments(task_id, created_at)",
    """
    CREATE TABLE board_webhooks (
        id               TEXT PRIMARY KEY,
        board_id         TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
        agent_id         TEXT REFERENCES agents(id) ON DELETE SET NULL,
        description      TEXT NOT NULL,
        enabled          INTEGER NOT NULL DEFAULT 1,
        secret_sealed    BLOB,
        signature_header TEXT,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL
    )
    """,
    """
    CREATE TABLE webhook_payloads (
        id                TEXT PRIMARY KEY,
        webhook_id        TEXT NOT NULL REFERENCES board_webhooks(id) ON DELETE CASCADE,
        board_id          TEXT NOT NULL,
        payload           BLOB NOT NULL,
        content_type      TEXT NOT NULL DEFAULT '',
        headers           TEXT NOT NULL DEFAULT '{}',
        received_at       REAL NOT NULL,
        delivered_at      REAL,
        delivery_attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at   REAL,
        last_error        TEXT
    )
    """,
    "CREATE INDEX webhook_payloads_due ON webhook_payloads(next_attempt_at) "
    "WHERE delivered_at IS NULL",
)

# Template sync jobs survive a hub restart: the admin polling one still gets its results.
V5 = (
    """
    CREATE TABLE template_sync_jobs (
        id          TEXT PRIMARY KEY,
        gateway_id  TEXT NOT NULL,
        options     TEXT NOT NULL,  -- JSON: the sync's query options
        items       TEXT NOT NULL,  -- JSON: per agent, the generation queued or the error
        created_at  REAL NOT NULL
    )
    """,
    "CREATE INDEX template_sync_jobs_created ON template_sync_jobs(created_at)",
)

# Replay protection that survives a restart: a signed payload keeps its body's digest,
# and a repeat within the window is found by it in the transaction that would store it.
V6 = (
    "ALTER TABLE webhook_payloads ADD COLUMN body_sha256 BLOB",
    "CREATE INDEX webhook_payloads_digest ON webhook_payloads(webhook_id, body_sha256) "
    "WHERE body_sha256 IS NOT NULL",
)

# The dashboard: fleet counts sampled over time (its trends and charts; JSON so a new
# count needs no migration), and events found by kind and time (failed wakes, drift).
V7 = (
    """
    CREATE TABLE fleet_samples (
        at      REAL PRIMARY KEY,
        counts  TEXT NOT NULL  -- JSON: {"agents.online": 12, "gateways.connected": 3, ...}
    )
    """,
    "CREATE INDEX events_kind_at ON events(kind, at)",
)

# Mission Control parity. Gateways: the workspace root an operator declares (the hub
# renders with it before the sidecar ever connects), what the sidecar reports, and the
# agents its openclaw.json holds that the hub does not manage (adoptable). Agents: the
# work state they report, and where an adopted agent's workspace is. Boards: groups,
# the pending-approval rule. The activity trail is filtered by board. Approvals (with
# their linked tasks), board memory, task tags.
V8 = (
    "ALTER TABLE gateways ADD COLUMN declared_workspace_root TEXT",
    "ALTER TABLE gateways ADD COLUMN reported_workspace_root TEXT",
    "ALTER TABLE gateways ADD COLUMN follows_hub_workspace_root INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE gateways ADD COLUMN unmanaged_agents TEXT NOT NULL DEFAULT '[]'",
    # the agents' files name a root or agent-API address the sidecar's Hello contradicts
    "ALTER TABLE gateways ADD COLUMN files_stale INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE agents ADD COLUMN work_state TEXT",
    "ALTER TABLE agents ADD COLUMN reported_status TEXT",
    "ALTER TABLE agents ADD COLUMN current_task_id TEXT",
    "ALTER TABLE agents ADD COLUMN work_state_at REAL",
    "ALTER TABLE agents ADD COLUMN workspace_path TEXT",
    "ALTER TABLE agents ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0",
    # a worker's role soul, read from the souls directory when it was created or synced
    "ALTER TABLE agents ADD COLUMN role_soul TEXT",
    """
    CREATE TABLE board_groups (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        slug        TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    )
    """,
    "ALTER TABLE boards ADD COLUMN board_group_id TEXT "
    "REFERENCES board_groups(id) ON DELETE SET NULL",
    "CREATE INDEX boards_group ON boards(board_group_id)",
    "ALTER TABLE boards ADD COLUMN block_status_changes_with_pending_approval "
    "INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE events ADD COLUMN board_id TEXT",
    "CREATE INDEX events_board ON events(board_id, id)",
    "CREATE INDEX events_agent ON events(agent_id, id)",
    "CREATE INDEX events_kind ON events(kind, id)",
    """
    CREATE TABLE approvals (
        id            TEXT PRIMARY KEY,
        board_id      TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
        agent_id      TEXT REFERENCES agents(id) ON DELETE SET NULL,
        action_type   TEXT NOT NULL,
        payload       TEXT NOT NULL DEFAULT '{}',
        confidence    REAL,
        rubric_scores TEXT NOT NULL DEFAULT '{}',
        status        TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'approved', 'rejected')),
        resolution    TEXT NOT NULL DEFAULT '',
        resolved_by   TEXT,
        created_at    REAL NOT NULL,
        resolved_at   REAL
    )
    """,
    "CREATE INDEX approvals_board ON approvals(board_id, status, created_at)",
    """
    CREATE TABLE approval_tasks (
        approval_id TEXT NOT NULL REFERENCES approvals(id) ON DELETE CASCADE,
        task_id     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        PRIMARY KEY (approval_id, task_id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX approval_tasks_task ON approval_tasks(task_id)",
    """
    CREATE TABLE board_memory (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        board_id    TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
        content     TEXT NOT NULL,
        tags        TEXT NOT NULL DEFAULT '[]',
        source      TEXT NOT NULL DEFAULT '',
        author_kind TEXT NOT NULL CHECK (author_kind IN ('user', 'agent')),
        author_id   TEXT NOT NULL,
        created_at  REAL NOT NULL
    )
    """,
    "CREATE INDEX board_memory_board ON board_memory(board_id, id)",
    """
    CREATE TABLE task_tags (
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        tag     TEXT NOT NULL,
        PRIMARY KEY (task_id, tag)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX task_tags_tag ON task_tags(tag, task_id)",
)

# Pause and resume (Mission Control's `paused`): an agent paused by itself or with its
# board, and a paused board. A paused agent's heartbeat job is off; it is not woken.
V9 = (
    "ALTER TABLE agents ADD COLUMN paused_at REAL",
    "ALTER TABLE agents ADD COLUMN paused_by TEXT CHECK (paused_by IN ('agent', 'board'))",
    "ALTER TABLE boards ADD COLUMN paused_at REAL",
)

# Fleet: gateway labels (what selectors pick), the labels a fleet join token gives the
# gateways it enrolls, what sidecars report of each agent's files (drift), and staged
# rollouts: one row per rollout, one per gateway it
# targets (its wave, its gate verdict, and per agent the generation applied and the
# values it replaced, which a rollback puts back). Plain types only: the same SQL runs
# on PostgreSQL.
V10 = (
    """
    CREATE TABLE gateway_labels (
        gateway_id  TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
        label_key   TEXT NOT NULL,
        label_value TEXT NOT NULL,
        PRIMARY KEY (gateway_id, label_key)
    )
    """,
    "CREATE INDEX gateway_labels_key ON gateway_labels(label_key, label_value)",
    "ALTER TABLE join_tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
    """
    CREATE TABLE rollouts (
        id                  TEXT PRIMARY KEY,
        name                TEXT NOT NULL,
        selector            TEXT NOT NULL,
        agents              TEXT NOT NULL,  -- which agents of each gateway: main, all
        change              TEXT NOT NULL,  -- JSON: {"kind": ..., its fields}
        plan                TEXT NOT NULL,  -- JSON: {"canary": N, "percentages": [...]}
        wave_count          INTEGER NOT NULL,
        current_wave        INTEGER NOT NULL DEFAULT 0,
        max_fail_percentage REAL NOT NULL,
        gate_deadline_s     REAL NOT NULL,
        status              TEXT NOT NULL,
        reason              TEXT,
        created_at          REAL NOT NULL,
        updated_at          REAL NOT NULL,
        finished_at         REAL
    )
    """,
    "CREATE INDEX rollouts_status ON rollouts(status, created_at)",
    """
    CREATE TABLE rollout_targets (
        rollout_id     TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
        gateway_id     TEXT NOT NULL,
        wave           INTEGER NOT NULL,
        position       INTEGER NOT NULL,
        state          TEXT NOT NULL DEFAULT 'pending',
        reason         TEXT,
        applied_at     REAL,
        decided_at     REAL,
        rolled_back_at REAL,
        agents         TEXT NOT NULL DEFAULT '[]',  -- JSON: per agent, generation and previous
        PRIMARY KEY (rollout_id, gateway_id)
    )
    """,
    "CREATE INDEX rollout_targets_wave ON rollout_targets(rollout_id, wave, position)",
    "CREATE INDEX rollout_targets_gateway ON rollout_targets(gateway_id, state)",
    # Drift: the agent's files as its sidecar last reported them (Hello inventory or the
    # answer to an apply), to compare with what the hub rendered.
    "ALTER TABLE agents ADD COLUMN reported_files TEXT",  # JSON: name -> sha256 hex
    "ALTER TABLE agents ADD COLUMN reported_files_at REAL",
    "ALTER TABLE agents ADD COLUMN reported_in_config INTEGER",
)


# V11 and V12 are numbered for work landing beside this one; until it lands they are empty.
V11: tuple[str, ...] = ()
V12: tuple[str, ...] = ()

# Alerts: rules with an outbound webhook, one delivery per alert (the signed body kept,
# so every attempt sends the same bytes), one row per attempt, the cooldown state per
# rule and subject, and how far the event log has been read (alerts survive a restart).
# A rule's board/gateway filter is not a foreign key: deleting a board does not delete
# a rule and its history silently; the rule then matches nothing.
V13 = (
    """
    CREATE TABLE alert_rules (
        id                   TEXT PRIMARY KEY,
        name                 TEXT NOT NULL,
        kind                 TEXT NOT NULL,
        url                  TEXT NOT NULL,
        secret_sealed        BLOB NOT NULL,
        enabled              INTEGER NOT NULL DEFAULT 1,
        board_id             TEXT,
        gateway_id           TEXT,
        disconnected_for_s   REAL,
        expiring_within_days REAL,
        cooldown_s           REAL NOT NULL,
        created_at           REAL NOT NULL,
        updated_at           REAL NOT NULL
    )
    """,
    """
    CREATE TABLE alert_deliveries (
        id              TEXT PRIMARY KEY,
        rule_id         TEXT NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
        subject         TEXT NOT NULL,
        summary         TEXT NOT NULL,
        event_id        INTEGER,
        payload         BLOB NOT NULL,
        created_at      REAL NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        delivered_at    REAL,
        last_error      TEXT
    )
    """,
    "CREATE INDEX alert_deliveries_rule ON alert_deliveries(rule_id, created_at)",
    "CREATE INDEX alert_deliveries_due ON alert_deliveries(state, next_attempt_at)",
    """
    CREATE TABLE alert_attempts (
        delivery_id      TEXT NOT NULL REFERENCES alert_deliveries(id) ON DELETE CASCADE,
        attempt          INTEGER NOT NULL,
        at               REAL NOT NULL,
        status           INTEGER,
        error            TEXT,
        response_excerpt TEXT NOT NULL DEFAULT '',
        duration_ms      REAL,
        PRIMARY KEY (delivery_id, attempt)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE alert_subjects (
        rule_id          TEXT NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
        subject          TEXT NOT NULL,
        last_fired_at    REAL,
        fired_occurrence TEXT,
        last_occurrence  TEXT,
        suppressed       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (rule_id, subject)
    ) WITHOUT ROWID
    """,
    "CREATE TABLE alert_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), event_id INTEGER NOT NULL)",
)

# Presence: the recovery ladder's rung an agent that went quiet is on (NULL: none); the
# heartbeat governor's settings (JSON) on boards and agents, a board's last activity, and
# how far an agent's cadence is backed off.
V14 = (
    "ALTER TABLE agents ADD COLUMN recovery TEXT",
    "ALTER TABLE boards ADD COLUMN heartbeat_governor TEXT",
    "ALTER TABLE boards ADD COLUMN last_activity_at REAL",
    "ALTER TABLE agents ADD COLUMN heartbeat_governor TEXT",
    "ALTER TABLE agents ADD COLUMN governor_step INTEGER NOT NULL DEFAULT 0",
)

# Usage: tokens per gateway session and UTC day, as the gateway counts them from the
# session's transcript and the sidecar relays them (the day's whole count so far; the
# highest heard is kept). The hub's agent and board are those of the gateway agent when
# it was first heard of; no foreign keys, so the history outlives a deleted agent.
V15 = (
    """
    CREATE TABLE token_usage (
        gateway_id         TEXT NOT NULL,
        session_id         TEXT NOT NULL,
        day                TEXT NOT NULL,  -- 'YYYY-MM-DD', UTC
        gateway_agent_id   TEXT NOT NULL,
        session_key        TEXT NOT NULL,
        agent_id           TEXT,
        board_id           TEXT,
        total_tokens       INTEGER NOT NULL,
        input_tokens       INTEGER NOT NULL DEFAULT 0,
        output_tokens      INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        observed_at        REAL NOT NULL,
        updated_at         REAL NOT NULL,
        PRIMARY KEY (gateway_id, session_id, day)
    )
    """,
    "CREATE INDEX token_usage_day ON token_usage(day, agent_id)",
    "CREATE INDEX token_usage_board ON token_usage(board_id, day)",
)

# Presence from what the gateway does: where an agent's last check-in came from
# (heartbeat, runtime, wake), and what its sidecar found keeps it from running (the cause
# named when it goes quiet), with when that was first found.
V16 = (
    "ALTER TABLE agents ADD COLUMN last_checkin_source TEXT",
    "ALTER TABLE agents ADD COLUMN cause_code TEXT",
    "ALTER TABLE agents ADD COLUMN cause TEXT",
    "ALTER TABLE agents ADD COLUMN cause_since REAL",
)

# Several hubs on one database: the hub whose session holds a gateway's stream owns the
# gateway (delivers its commands, judges its agents), as (owner hub, epoch); each taking
# of it raises the epoch, so a session of an older epoch knows it was superseded. `hubs`
# lists the hub processes that ran, and when each last said it was alive (an owner that
# stopped saying so leaves its gateways to be adopted by one that does); a live query
# asked of a hub without the stream is answered by the owner through `relayed_answers`.
V17 = (
    "ALTER TABLE gateways ADD COLUMN owner_hub TEXT",
    "ALTER TABLE gateways ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0",
    """
    CREATE TABLE hubs (
        id          TEXT PRIMARY KEY,
        started_at  REAL NOT NULL,
        alive_at    REAL NOT NULL,
        stopped_at  REAL
    )
    """,
    # A live query's answer relayed from the hub that owns the gateway to the hub that was
    # asked (hub/link/relay.py): kept a minute, whatever the asker made of it.
    """
    CREATE TABLE relayed_answers (
        id          TEXT PRIMARY KEY,
        answer      BLOB,
        error_code  TEXT,
        error       TEXT,
        created_at  REAL NOT NULL
    )
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14, V15, V16, V17
)  # fmt: skip
