-- Schema of chainlit-persist for mysql, generated from datalayers/sqlalchemy/schema.py
-- by `make ddl`. The Alembic migrations produce exactly this (tests/datalayers/test_migrations.py).
-- Prefer `python -m datalayers.migrations upgrade`: it also records the revision.
-- Identifiers must compare exactly: revision 0007 converts every table to a binary,
-- no-pad collation (MariaDB utf8mb4_nopad_bin, MySQL 8 utf8mb4_0900_bin); by hand, run
-- ALTER TABLE <t> CONVERT TO CHARACTER SET utf8mb4 COLLATE <that collation> for each.

CREATE TABLE users (
	id VARCHAR(255) NOT NULL, 
	identifier VARCHAR(255) NOT NULL, 
	metadata JSON NOT NULL, 
	`createdAt` VARCHAR(32), 
	PRIMARY KEY (id), 
	UNIQUE (identifier)
)CHARSET=utf8mb4;

CREATE TABLE threads (
	id VARCHAR(255) NOT NULL, 
	`createdAt` VARCHAR(32), 
	`updatedAt` VARCHAR(32), 
	name LONGTEXT, 
	`userId` VARCHAR(255), 
	`userIdentifier` VARCHAR(255), 
	tags JSON, 
	metadata JSON, 
	PRIMARY KEY (id), 
	CONSTRAINT `threads_userId_fkey` FOREIGN KEY(`userId`) REFERENCES users (id) ON DELETE CASCADE
)CHARSET=utf8mb4;

CREATE INDEX ix_threads_updated ON threads (`updatedAt`, id);

CREATE INDEX ix_threads_user_updated ON threads (`userId`, `updatedAt`, id);

CREATE TABLE steps (
	id VARCHAR(255) NOT NULL, 
	name LONGTEXT NOT NULL, 
	type VARCHAR(255) NOT NULL, 
	`threadId` VARCHAR(255) NOT NULL, 
	`parentId` VARCHAR(255), 
	`disableFeedback` BOOL NOT NULL, 
	streaming BOOL NOT NULL, 
	`waitForAnswer` BOOL, 
	`isError` BOOL, 
	metadata JSON, 
	tags JSON, 
	input LONGTEXT, 
	output LONGTEXT, 
	`createdAt` VARCHAR(32), 
	start VARCHAR(32), 
	end VARCHAR(32), 
	generation JSON, 
	`showInput` VARCHAR(255), 
	language VARCHAR(255), 
	indent INTEGER, 
	command VARCHAR(255), 
	modes JSON, 
	`defaultOpen` BOOL, 
	`autoCollapse` BOOL, 
	extra JSON, 
	PRIMARY KEY (id)
)CHARSET=utf8mb4;

CREATE INDEX ix_steps_thread_created ON steps (`threadId`, `createdAt`);

CREATE TABLE elements (
	id VARCHAR(255) NOT NULL, 
	`threadId` VARCHAR(255), 
	type VARCHAR(255), 
	url LONGTEXT, 
	`chainlitKey` VARCHAR(255), 
	name LONGTEXT NOT NULL, 
	display VARCHAR(255), 
	`objectKey` LONGTEXT, 
	size VARCHAR(255), 
	page INTEGER, 
	language VARCHAR(255), 
	`forId` VARCHAR(255), 
	mime VARCHAR(255), 
	props JSON, 
	extra JSON, 
	PRIMARY KEY (id)
)CHARSET=utf8mb4;

CREATE INDEX ix_elements_for ON elements (`forId`);

CREATE INDEX ix_elements_thread ON elements (`threadId`);

CREATE TABLE feedbacks (
	id VARCHAR(255) NOT NULL, 
	`forId` VARCHAR(255) NOT NULL, 
	`threadId` VARCHAR(255) NOT NULL, 
	value INTEGER NOT NULL, 
	comment LONGTEXT, 
	PRIMARY KEY (id)
)CHARSET=utf8mb4;

CREATE INDEX ix_feedbacks_for ON feedbacks (`forId`);

CREATE INDEX ix_feedbacks_thread_value ON feedbacks (`threadId`, value);

CREATE TABLE session_revocations (
	`userIdentifier` VARCHAR(255) NOT NULL, 
	`revokedAt` VARCHAR(32) NOT NULL, 
	reason VARCHAR(255), 
	PRIMARY KEY (`userIdentifier`)
)CHARSET=utf8mb4;

CREATE TABLE api_tokens (
	id VARCHAR(64) NOT NULL, 
	`userIdentifier` VARCHAR(255) NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	`tokenHash` VARCHAR(64) NOT NULL, 
	`createdAt` VARCHAR(32) NOT NULL, 
	`expiresAt` VARCHAR(32), 
	`lastUsedAt` VARCHAR(32), 
	PRIMARY KEY (id)
)CHARSET=utf8mb4;

CREATE INDEX ix_api_tokens_user_created ON api_tokens (`userIdentifier`, `createdAt`);
