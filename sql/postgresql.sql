-- Schema of chainlit-persist for postgresql, generated from datalayers/sqlalchemy/schema.py
-- by `make ddl`. The Alembic migrations produce exactly this (tests/datalayers/test_migrations.py).
-- Prefer `python -m datalayers.migrations upgrade`: it also records the revision.

CREATE TABLE users (
	id VARCHAR(255) NOT NULL, 
	identifier VARCHAR(255) NOT NULL, 
	metadata JSONB NOT NULL, 
	"createdAt" VARCHAR(32), 
	PRIMARY KEY (id), 
	UNIQUE (identifier)
);

CREATE TABLE threads (
	id VARCHAR(255) NOT NULL, 
	"createdAt" VARCHAR(32), 
	"updatedAt" VARCHAR(32), 
	name TEXT, 
	"userId" VARCHAR(255), 
	"userIdentifier" VARCHAR(255), 
	tags JSONB, 
	metadata JSONB, 
	PRIMARY KEY (id), 
	CONSTRAINT "threads_userId_fkey" FOREIGN KEY("userId") REFERENCES users (id) ON DELETE CASCADE
);

CREATE INDEX ix_threads_updated ON threads ("updatedAt", id);

CREATE INDEX ix_threads_user_updated ON threads ("userId", "updatedAt", id);

CREATE TABLE steps (
	id VARCHAR(255) NOT NULL, 
	name TEXT NOT NULL, 
	type VARCHAR(255) NOT NULL, 
	"threadId" VARCHAR(255) NOT NULL, 
	"parentId" VARCHAR(255), 
	"disableFeedback" BOOLEAN NOT NULL, 
	streaming BOOLEAN NOT NULL, 
	"waitForAnswer" BOOLEAN, 
	"isError" BOOLEAN, 
	metadata JSONB, 
	tags JSONB, 
	input TEXT, 
	output TEXT, 
	"createdAt" VARCHAR(32), 
	start VARCHAR(32), 
	"end" VARCHAR(32), 
	generation JSONB, 
	"showInput" VARCHAR(255), 
	language VARCHAR(255), 
	indent INTEGER, 
	command VARCHAR(255), 
	modes JSONB, 
	"defaultOpen" BOOLEAN, 
	"autoCollapse" BOOLEAN, 
	extra JSONB, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_steps_thread_created ON steps ("threadId", "createdAt");

CREATE TABLE elements (
	id VARCHAR(255) NOT NULL, 
	"threadId" VARCHAR(255), 
	type VARCHAR(255), 
	url TEXT, 
	"chainlitKey" VARCHAR(255), 
	name TEXT NOT NULL, 
	display VARCHAR(255), 
	"objectKey" TEXT, 
	size VARCHAR(255), 
	page INTEGER, 
	language VARCHAR(255), 
	"forId" VARCHAR(255), 
	mime VARCHAR(255), 
	props JSONB, 
	extra JSONB, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_elements_for ON elements ("forId");

CREATE INDEX ix_elements_thread ON elements ("threadId");

CREATE TABLE feedbacks (
	id VARCHAR(255) NOT NULL, 
	"forId" VARCHAR(255) NOT NULL, 
	"threadId" VARCHAR(255) NOT NULL, 
	value INTEGER NOT NULL, 
	comment TEXT, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_feedbacks_for ON feedbacks ("forId");

CREATE INDEX ix_feedbacks_thread_value ON feedbacks ("threadId", value);

CREATE TABLE session_revocations (
	"userIdentifier" VARCHAR(255) NOT NULL, 
	"revokedAt" VARCHAR(32) NOT NULL, 
	reason VARCHAR(255), 
	PRIMARY KEY ("userIdentifier")
);

CREATE TABLE api_tokens (
	id VARCHAR(64) NOT NULL, 
	"userIdentifier" VARCHAR(255) NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	"tokenHash" VARCHAR(64) NOT NULL, 
	"createdAt" VARCHAR(32) NOT NULL, 
	"expiresAt" VARCHAR(32), 
	"lastUsedAt" VARCHAR(32), 
	PRIMARY KEY (id)
);

CREATE INDEX ix_api_tokens_user_created ON api_tokens ("userIdentifier", "createdAt");

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE INDEX IF NOT EXISTS ix_steps_output_trgm ON steps USING gin (lower("output") gin_trgm_ops);

CREATE INDEX IF NOT EXISTS ix_threads_name_trgm ON threads USING gin (lower("name") gin_trgm_ops);
