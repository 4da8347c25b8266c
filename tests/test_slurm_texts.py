"""What the Slurm placement says, without a cluster (the cluster tests check it in context)."""

from __future__ import annotations

from ywmagics.orchestrator.placements.slurm import queued_text


def test_a_queued_job_says_slurms_reason_and_when_waiting_will_not_help() -> None:
    assert queued_text("7", "big", "PENDING", "Resources") == "job 7 on big: pending (Resources)"
    assert queued_text("7", "big", "PENDING", "None") == "job 7 on big: pending"
    never = queued_text("8", "big", "PENDING", "PartitionConfig")
    assert never.startswith("job 8 on big: pending (PartitionConfig): Slurm keeps it waiting")
    assert "stop it and ask for other --resources" in never
