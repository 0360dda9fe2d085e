"""Chainlit's documented PostgreSQL DDL, as deployed Chainlit databases have it.

Frozen: this is what existing installations were created with, so it never follows the
live schema. Revision 0001 runs it on a fresh PostgreSQL database (so a fresh install
travels the same 0002 upgrade path as a deployed one), and the tests and benchmarks seed
"a Chainlit database" with it. Imports nothing from the rest of the project on purpose:
the revisions that use it must not change when the live tables do.
"""

CHAINLIT_POSTGRES_DDL = (
    ('CREATE TABLE IF NOT EXISTS users ("id" UUID PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE, '
     '"metadata" JSONB NOT NULL, "createdAt" TEXT)'),
    ('CREATE TABLE IF NOT EXISTS threads ("id" UUID PRIMARY KEY, "createdAt" TEXT, "name" TEXT, '
     '"userId" UUID, "userIdentifier" TEXT, "tags" TEXT[], "metadata" JSONB, '
     'FOREIGN KEY ("userId") REFERENCES users("id") ON DELETE CASCADE)'),
    ('CREATE TABLE IF NOT EXISTS steps ("id" UUID PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL, '
     '"threadId" UUID NOT NULL, "parentId" UUID, "disableFeedback" BOOLEAN NOT NULL DEFAULT false, '
     '"streaming" BOOLEAN NOT NULL, "waitForAnswer" BOOLEAN, "isError" BOOLEAN, "metadata" JSONB, '
     '"tags" TEXT[], "input" TEXT, "output" TEXT, "createdAt" TEXT, "start" TEXT, "end" TEXT, '
     '"generation" JSONB, "showInput" TEXT, "language" TEXT, "indent" INT)'),
    ('CREATE TABLE IF NOT EXISTS elements ("id" UUID PRIMARY KEY, "threadId" UUID, "type" TEXT, "url" TEXT, '
     '"chainlitKey" TEXT, "name" TEXT NOT NULL, "display" TEXT, "objectKey" TEXT, "size" TEXT, '
     '"page" INT, "language" TEXT, "forId" UUID, "mime" TEXT)'),
    ('CREATE TABLE IF NOT EXISTS feedbacks ("id" UUID PRIMARY KEY, "forId" UUID NOT NULL, '
     '"threadId" UUID NOT NULL, "value" INT NOT NULL, "comment" TEXT)'),
)
