"""The LLM agent: any OpenAI-compatible endpoint, with retries, structured output, a cache and a
deterministic fallback (see ``agent.llm.client``)."""

from agent.llm.cache import MemoryCache, SqlCache
from agent.llm.client import AGENT, LLMClient, LLMError, LLMResult, prompt_hash

__all__ = ["AGENT", "LLMClient", "LLMError", "LLMResult", "MemoryCache", "SqlCache", "prompt_hash"]
