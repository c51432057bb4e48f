"""Deployment files, validated offline with the tools their ecosystems use. Nothing here builds
or runs a container (no Docker engine in CI); tests/integration/test_deploy.py deploys the
CloudFormation template to LocalStack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_dockerfile_passes_hadolint() -> None:
    out = _run("hadolint", "Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    out = _run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_mounts_the_same_init_hook_as_host_mode() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["localstack"]["volumes"]
    assert "./pipeline/ops/bootstrap.py:/etc/localstack/init/ready.d/10_tts_bootstrap.py:ro" in mounts
    assert (ROOT / "localstack/init/ready.d/10_tts_bootstrap.py").resolve() == (ROOT / "pipeline/ops/bootstrap.py")
    gpu = compose["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and compose["services"]["worker-gpu"]["profiles"] == ["gpu"]


def test_cloudformation_template_passes_cfn_lint() -> None:
    out = _run("cfn-lint", "infra/cloudformation.yaml")
    assert out.returncode == 0, out.stdout + out.stderr


def _template() -> dict:
    class Loader(yaml.SafeLoader):
        """Reads CloudFormation's short-form tags (!Ref, !Sub...) as plain values."""

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
        if isinstance(node, yaml.ScalarNode):
            return f"!{suffix} {node.value}"
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)

    Loader.add_multi_constructor("!", tag)
    return yaml.load((ROOT / "infra/cloudformation.yaml").read_text(), Loader=Loader)


def test_worker_policy_is_least_privilege() -> None:
    template = _template()
    statements = template["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    for st in statements:
        if not isinstance(st, dict):
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        assert not any(a.endswith(":*") or a == "*" for a in actions), st
        assert "*" not in resources, st


def test_the_worker_may_read_what_it_resumes_from_and_presigns() -> None:
    """Issue 17, defect 10: a retried long job reads its durable chunks back from outputs/, and
    the presigned URL in every result is a GetObject signed by the worker: both need s3:GetObject
    on outputs/* (LocalStack does not enforce IAM; tests/faults/test_policies.py checks every
    request the components make against the policies)."""
    template = _template()
    statements = template["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    reads = [st for st in statements if isinstance(st, dict) and st["Action"] in ("s3:GetObject", ["s3:GetObject"])]
    resources = [r for st in reads for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])]
    assert "!Sub ${JobBucket.Arn}/outputs/*" in resources, resources


def test_kubernetes_manifests_validate() -> None:
    for manifest in ("infra/k8s/worker.yaml", "infra/k8s/reconcile.yaml"):
        out = _run("kubernetes-validate", manifest)
        assert out.returncode == 0, manifest + ": " + out.stdout + out.stderr


def test_keda_scaledobject_matches_its_schema_and_scales_to_zero() -> None:
    import json

    schema = json.loads((ROOT / "infra/k8s/schemas/keda-scaledobject.schema.json").read_text())
    docs = list(yaml.safe_load_all((ROOT / "infra/k8s/keda-scaledobject.yaml").read_text()))
    for doc in docs:
        jsonschema.validate(doc, schema)
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["triggers"][0]["type"] == "aws-sqs-queue"
    deployment = next(
        d for d in yaml.safe_load_all((ROOT / "infra/k8s/worker.yaml").read_text()) if d["kind"] == "Deployment"
    )
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # Grace period covers the worker's shutdown grace (docs/operations.md).
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(env["TTS_SHUTDOWN_GRACE_S"])


def test_a_bad_scaledobject_is_rejected_by_the_schema() -> None:
    """The schema can fail: a queue length that is not a number string."""
    import json

    schema = json.loads((ROOT / "infra/k8s/schemas/keda-scaledobject.schema.json").read_text())
    doc = next(
        d
        for d in yaml.safe_load_all((ROOT / "infra/k8s/keda-scaledobject.yaml").read_text())
        if d["kind"] == "ScaledObject"
    )
    doc["spec"]["triggers"][0]["metadata"]["queueLength"] = "four"
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("schema accepted queueLength 'four'")


def test_every_lane_has_its_queue_notification_and_scaler_trigger() -> None:
    """Issue 19: the interactive inbox is notified to its own queue (same DLQ), its prefix does
    not overlap inbox/ (S3 refuses that), the worker may consume both queues and KEDA scales on
    both backlogs."""
    resources = _template()["Resources"]
    interactive = resources["InteractiveQueue"]["Properties"]
    assert interactive["QueueName"] == "!Sub ${QueueName}-interactive"
    assert interactive["RedrivePolicy"] == resources["JobQueue"]["Properties"]["RedrivePolicy"]
    configs = resources["JobBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    prefixes = {
        c["Queue"]: next(r["Value"] for r in c["Filter"]["S3Key"]["Rules"] if r["Name"] == "prefix") for c in configs
    }
    assert prefixes == {"!GetAtt JobQueue.Arn": "inbox/", "!GetAtt InteractiveQueue.Arn": "inbox-interactive/"}
    assert not any(a != b and a.startswith(b) for a in prefixes.values() for b in prefixes.values())
    consume = next(
        s
        for s in resources["WorkerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if isinstance(s, dict) and s["Sid"] == "ConsumeJobs"
    )
    assert sorted(consume["Resource"]) == ["!GetAtt InteractiveQueue.Arn", "!GetAtt JobQueue.Arn"]
    scaled = next(
        d
        for d in yaml.safe_load_all((ROOT / "infra/k8s/keda-scaledobject.yaml").read_text())
        if d["kind"] == "ScaledObject"
    )
    urls = [t["metadata"]["queueURL"].rsplit("/", 1)[-1] for t in scaled["spec"]["triggers"]]
    assert urls == ["tts-jobs", "tts-jobs-interactive"]


def test_queue_policies_name_both_the_source_bucket_and_its_account() -> None:
    """Issue 27: a statement letting an AWS service send to a queue holds it to this bucket
    (aws:SourceArn) and this account (aws:SourceAccount): a bucket name is global, so the ARN alone
    would admit a bucket of that name in another account (the confused deputy)."""
    resources = _template()["Resources"]
    policies = [r for r in resources.values() if r["Type"] == "AWS::SQS::QueuePolicy"]
    assert policies
    for policy in policies:
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if st["Effect"] != "Allow" or "Service" not in st.get("Principal", {}):
                continue
            keys = {key: value for test in st.get("Condition", {}).values() for key, value in test.items()}
            assert "aws:SourceArn" in keys, st
            assert keys.get("aws:SourceAccount") == "!Ref AWS::AccountId", st


def _statements(policy: str) -> list[dict]:
    statements = _template()["Resources"][policy]["Properties"]["PolicyDocument"]["Statement"]
    # A conditional statement (!If [cond, statement, NoValue]) counts as its statement.
    return [s if isinstance(s, dict) else s[1] for s in statements]


def _listed(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


CLIENT_WRITES = {"inbox/*", "inbox-interactive/*", "voices/uploads/*", "cancel/*"}
CLIENT_READS = {"s3:GetObject", "s3:ListBucket", "kms:Decrypt", "kms:GenerateDataKey"}


def test_clients_may_write_the_inbox_and_never_a_status_or_a_result() -> None:
    """Issue 27, defect 9: submitting writes the manifest only (the worker creates the status),
    so the client policy grants no write under status/ or results/ (whoever holds it could end any
    job or break a running one's claim), nor outputs/; every write it grants is on a prefix the
    client commands write: manifests of either lane, uploaded clips, cancellation markers. The
    requests those commands make: tests/integration/test_submit.py (a submit writes its manifest
    and nothing else)."""
    statements = _statements("ClientPolicy")
    writes: set[str] = set()
    for st in statements:
        assert st["Effect"] == "Allow", st
        actions = _listed(st["Action"])
        assert not any("*" in a for a in actions), st  # no s3:*, no s3:Put*
        for action in actions:
            if action in CLIENT_READS:
                continue
            for resource in _listed(st["Resource"]):
                prefix = resource.removeprefix("!Sub ${JobBucket.Arn}/")
                assert prefix != resource, f"{action} on {resource}: not a key pattern of the job bucket"
                assert not prefix.startswith(("status/", "results/", "outputs/")), f"{action} on {prefix}"
                assert prefix in CLIENT_WRITES, f"{action} on {prefix}"
                writes.add(f"{action} {prefix}")
    assert writes == {f"s3:PutObject {p}" for p in CLIENT_WRITES}, writes
    outputs = _template()["Outputs"]
    assert outputs["ClientPolicyArn"]["Value"] == "!Ref ClientPolicy"
