"""Placements: where an instance's process runs. The supervisor owns an instance's life the same
way wherever it runs: a local child process (the program itself, or what starts it elsewhere,
such as ``srun``) with its log, its process group and its end seen as a crash; a placement says
what that child is, how the backend is reached once it runs, and what it holds that the child's
end does not free.

- :mod:`~ywmagics.orchestrator.placements.local`: on this machine (the default);
- :mod:`~ywmagics.orchestrator.placements.slurm`: in a Slurm job, behind a node shim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ywmagics.orchestrator.processes import PrivateNetwork

if TYPE_CHECKING:
    import asyncio

    from ywmagics.orchestrator.events import Emit
    from ywmagics.orchestrator.supervisor import Instance
    from ywmagics.orchestrator.upstream import UpstreamPool


@dataclass
class Launch:
    """The local child to start for an instance."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    private_network: PrivateNetwork | None = None
    # said once it starts: e.g. that every local user can reach its TCP port
    warnings: list[str] = field(default_factory=list)
    # False: the placement reads the child's output (the node shim's first line says where
    # the backend is), and writes it to the log itself
    stdout_to_log: bool = True
    # written to the child's stdin, which stays open for its life (else: /dev/null)
    stdin: bytes | None = None
    # seconds the child has to end by itself, after a SIGTERM, once the orchestrator has ended
    # (however): 0 kills it at once
    end_grace: float = 0.0


class Placement(Protocol):
    kind: str

    async def launch(
        self, instance: Instance, placeholders: dict[str, str], env: dict[str, str]
    ) -> Launch:
        """The child that runs ``instance``: ``placeholders`` expand the manifest's start
        command and environment (all but ``socket`` and ``port``, which the placement gives),
        ``env`` is what every backend gets."""
        ...

    async def connect(
        self, instance: Instance, process: asyncio.subprocess.Process, emit: Emit
    ) -> UpstreamPool:
        """Once the child runs: how to reach the backend (it may not answer yet)."""
        ...

    async def ask_to_stop(
        self, instance: Instance, process: asyncio.subprocess.Process, within: float
    ) -> None:
        """Before the child's process group is signalled: a chance to stop the backend
        gracefully, for up to ``within`` seconds (a job's srun turns SIGTERM into SIGKILL)."""
        ...

    async def cancel_start(self, instance: Instance) -> None:
        """A stop came while the instance starts (holding its lock): end a wait that may be
        long (a job in the queue), so that the start fails now and the stop goes on."""
        ...

    async def release(self, instance: Instance) -> None:
        """After the child has ended: free what it held elsewhere (sockets, a job)."""
        ...

    def facts(self, instance: Instance) -> dict[str, object]:
        """What listings say of where it runs."""
        ...

    async def sweep(self) -> list[str]:
        """At the orchestrator's start: end what a previous one left running there (jobs);
        what was ended, said for the log."""
        ...
