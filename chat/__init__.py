"""The conversation: providers (openai SDK, langchain, offline), history, prompts, files.

Importing this package imports no LLM SDK; `chat.providers.build_provider` imports the one
the configuration asks for. `chat.service` holds the Chainlit glue that `app.py` wires up.
"""

from .config import ChatConfig, ChatConfigError, load_chat_config

__all__ = ["ChatConfig", "ChatConfigError", "load_chat_config"]
