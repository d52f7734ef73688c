"""Calling a node: a plain function, or an agent through the registry and the Dispatcher.

A timed agent call takes its Dispatcher slot in the calling thread (the wait
for a slot is the Dispatcher's ``acquire_timeout``, not the node's timeout),
then runs the agent in a thread of its own.  At the timeout the call is
abandoned, not stopped (a thread cannot be killed): the breaker counts the
failure at once, while the slot stays taken until the call really returns,
so limits keep holding.  Under ``arun`` plain sync functions run in worker
threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from agent.dispatch.local import Dispatcher, Ticket
from agent.engine.flow import Node
from agent.engine.state import FlowState
from agent.engine.ops import Call
from agent.errors import AgentCallError, AgentError, NodeTimeout

__all__ = ["NodeCaller"]


class NodeCaller:
    """The calling half of the Engine; ``_agent(name)`` resolves a registered agent."""

    dispatcher: Dispatcher

    def _agent(self, name: str) -> Any:  # pragma: no cover - provided by Engine
        raise NotImplementedError

    # -- sync ------------------------------------------------------------------------------
    def _call(self, op: Call) -> Any:
        node = op.node
        if node.agent is not None:
            return self._call_agent(op)
        if node.timeout is None:
            out = node.fn(op.item, op.state) if op.has_item else node.fn(op.state)  # type: ignore[misc]
        else:
            out = _in_thread(lambda: _function(op), node, None)
        if inspect.isawaitable(out):
            out = _in_thread(lambda: asyncio.run(_awaited(out)), node, None) if node.timeout else \
                asyncio.run(_awaited(out))
        return out

    def _call_agent(self, op: Call) -> Any:
        node = op.node
        instance, request, key, context = self._agent_request(op)
        ticket = self.dispatcher.acquire(node.agent, key=key)  # type: ignore[arg-type]
        if node.timeout is not None:
            return _in_thread(lambda: _run_agent(node, instance, request, context), node, ticket)
        try:
            out = _run_agent(node, instance, request, context)
        except BaseException as exc:
            _settle(ticket, exc)
            raise
        else:
            _settle(ticket, None)
        finally:
            if ticket is not None:
                ticket.free()
        return out

    def _agent_request(self, op: Call) -> tuple[Any, dict[str, Any], Mapping[str, str | None], Any]:
        node, state = op.node, op.state
        instance = self._agent(node.agent)  # type: ignore[arg-type]
        if node.request is not None:
            request = node.request(op.item, state) if op.has_item else node.request(state)
        else:
            request = op.item if op.has_item else state.input
        if isinstance(request, BaseModel):
            request = request.model_dump()
        elif not isinstance(request, Mapping):
            request = {} if request is None else {"input": request}
        key = node.limit_key(state) if node.limit_key is not None else _default_key(state)
        return instance, request, key, state.context.child(node=node.name)

    # -- asyncio ---------------------------------------------------------------------------
    async def _acall(self, op: Call) -> Any:
        node = op.node
        if node.agent is not None:
            return await self._acall_agent(op)
        if _is_async(node.fn):
            coro = _awaited(node.fn(op.item, op.state) if op.has_item else node.fn(op.state))  # type: ignore[misc]
            if node.timeout is None:
                return await coro
            try:
                return await asyncio.wait_for(coro, node.timeout)
            except TimeoutError:
                raise _timeout_error(node) from None
        out = await _in_worker(lambda: _function(op), node)
        if inspect.isawaitable(out):
            if node.timeout is None:
                return await _awaited(out)
            try:
                return await asyncio.wait_for(_awaited(out), node.timeout)
            except TimeoutError:
                raise _timeout_error(node) from None
        return out

    async def _acall_agent(self, op: Call) -> Any:
        """Slot and call in one worker job, so waiters for a slot never starve its holder of a
        thread.  The job is shielded: a caller that gives up (timeout, cancellation) leaves it
        to free its own slot, and a job that gets its slot after that does not call the agent."""
        node = op.node
        instance, request, key, context = self._agent_request(op)
        lock = threading.Lock()
        shared: dict[str, Any] = {"ticket": None, "abandoned": False}

        def job() -> Any:
            ticket = self.dispatcher.acquire(node.agent, key=key)  # type: ignore[arg-type]
            with lock:
                shared["ticket"] = ticket
                abandoned = shared["abandoned"]
            try:
                if abandoned:
                    if ticket is not None:
                        ticket.abstain()
                    return None
                try:
                    out = _run_agent(node, instance, request, context)
                except BaseException as exc:
                    _settle(ticket, exc)
                    raise
                _settle(ticket, None)
                return out
            finally:
                if ticket is not None:
                    ticket.free()

        future = asyncio.get_running_loop().run_in_executor(None, job)
        try:
            if node.timeout is None:
                return await asyncio.shield(future)
            return await asyncio.wait_for(asyncio.shield(future), node.timeout)
        except BaseException as exc:
            if future.done():
                raise  # the job's own outcome (LimitTimeout, the agent's error...)
            with lock:
                shared["abandoned"] = True
                ticket = shared["ticket"]
            if isinstance(exc, TimeoutError):
                error = _timeout_error(node)
                if ticket is not None:
                    ticket.settle(error)
                raise error from None
            if ticket is not None:
                ticket.abstain()  # cancelled by our caller: no verdict on the agent
            raise


def _function(op: Call) -> Any:
    return op.node.fn(op.item, op.state) if op.has_item else op.node.fn(op.state)  # type: ignore[misc]


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _run_agent(node: Node, instance: Any, request: dict[str, Any], context: Any) -> Any:
    try:
        return instance.run(request, context=context)
    except AgentError:
        raise
    except Exception as exc:
        raise AgentCallError(node.agent or node.name, f"{type(exc).__name__}: {exc}") from exc


def _settle(ticket: Ticket | None, error: BaseException | None) -> None:
    if ticket is not None:
        ticket.settle(error)


def _default_key(state: FlowState) -> dict[str, str | None]:
    data = state.input
    campaign = data.get("campaign_id") if isinstance(data, Mapping) else getattr(data, "campaign_id", None)
    return {"tenant": state.context.tenant, "campaign": campaign if isinstance(campaign, str) else None}


def _timeout_error(node: Node) -> NodeTimeout:
    return NodeTimeout(node.agent or f"node {node.name}", f"node {node.name!r} ran past its timeout "
                                                          f"of {node.timeout}s")


def _in_thread(fn: Callable[[], Any], node: Node, ticket: Ticket | None) -> Any:
    """``fn()`` in a thread of its own, waited for up to the node's timeout; the ticket is freed
    when ``fn`` really ends, and settled with the outcome the caller saw."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()
            if ticket is not None:
                ticket.free()

    try:
        threading.Thread(target=target, name=f"agent-node-{node.name}", daemon=True).start()
    except BaseException as exc:
        _settle(ticket, exc)
        if ticket is not None:
            ticket.free()
        raise
    try:
        finished = done.wait(node.timeout)
    except BaseException:
        if ticket is not None:
            ticket.abstain()  # interrupted (KeyboardInterrupt): no verdict; the thread frees the slot
        raise
    if not finished:
        error = _timeout_error(node)
        _settle(ticket, error)
        raise error
    _settle(ticket, box.get("error"))
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _in_worker(fn: Callable[[], Any], node: Node) -> Any:
    """A plain sync function on a worker thread, awaited up to the node's timeout."""
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        if node.timeout is None:
            out = await future
        else:
            # shield: at the timeout the call is abandoned (its thread runs on), not cancelled.
            out = await asyncio.wait_for(asyncio.shield(future), node.timeout)
    except TimeoutError:
        if future.done():
            raise  # the function's own TimeoutError
        raise _timeout_error(node) from None
    return out
