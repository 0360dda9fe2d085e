"""Knowledge in the conversation: linked web pages, uploaded documents and a running summary.

The index that holds document chunks is chosen by `KNOWLEDGE_URL` scheme (`KNOWLEDGE_SCHEMES`
names each class by import path, so no driver is imported until it is used).
"""

#: scheme -> ("module:Class", pip extra that provides its driver)
KNOWLEDGE_SCHEMES: dict[str, tuple[str, str]] = {
    "sqlite": ("knowledge.index_sqlite:SQLiteKnowledgeIndex", "knowledge"),
    "postgresql": ("knowledge.index_postgres:PostgresKnowledgeIndex", "postgres"),
    "postgres": ("knowledge.index_postgres:PostgresKnowledgeIndex", "postgres"),
    "postgresql+asyncpg": ("knowledge.index_postgres:PostgresKnowledgeIndex", "postgres"),
    "qdrant": ("knowledge.index_qdrant:QdrantKnowledgeIndex", "qdrant"),
    "qdrants": ("knowledge.index_qdrant:QdrantKnowledgeIndex", "qdrant"),
    "qdrant+local": ("knowledge.index_qdrant:QdrantKnowledgeIndex", "qdrant"),
    "qdrant+memory": ("knowledge.index_qdrant:QdrantKnowledgeIndex", "qdrant"),
}
