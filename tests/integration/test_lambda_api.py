"""The Lambda API through boto3 and the AWS CLI, against a real `fastfaas serve`."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import httpx
import pytest

from tests.conftest import ServerProcess, module_server

# An unmodified Lambda handler: context, environment, print and logging.
LAMBDA_FUNCTION = """
import json, logging, os
logger = logging.getLogger()
logger.setLevel(logging.INFO)

def lambda_handler(event, context):
    print("printed", json.dumps(event))
    logger.info("logged at info")
    if event.get("fail"):
        raise ValueError("it failed as asked")
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "log_group": context.log_group_name,
        "log_stream": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "identity": context.identity,
        "client_context": context.client_context,
        "env": {k: os.environ.get(k) for k in (
            "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            "AWS_LAMBDA_FUNCTION_VERSION", "AWS_REGION", "_HANDLER", "GREETING")},
    }
"""


def lambda_zip(source: str = LAMBDA_FUNCTION) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", source)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "lambda-api")


@pytest.fixture(scope="module")
def aws(server: ServerProcess) -> Any:
    return boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def create(aws: Any, name: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "FunctionName": name, "Runtime": "python3.11",
        "Role": "arn:aws:iam::123456789012:role/ignored",
        "Handler": "lambda_function.lambda_handler", "Code": {"ZipFile": lambda_zip()}}
    params.update(extra)
    return aws.create_function(**params)  # type: ignore[no-any-return]


def test_create_get_update_and_delete_a_function(aws: Any) -> None:
    made = create(aws, "crud", MemorySize=256, Timeout=7, Description="first",
                  Environment={"Variables": {"GREETING": "hi"}})
    assert made["FunctionName"] == "crud" and made["Version"] == "$LATEST"
    assert made["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:crud"
    assert (made["MemorySize"], made["Timeout"], made["Description"]) == (256, 7, "first")
    assert made["Environment"] == {"Variables": {"GREETING": "hi"}}
    assert made["Runtime"].startswith("python3") and made["State"] == "Active"
    import hashlib
    assert base64.b64decode(made["CodeSha256"]) == hashlib.sha256(lambda_zip()).digest()
    with pytest.raises(aws.exceptions.ResourceConflictException):
        create(aws, "crud")
    got = aws.get_function(FunctionName="crud")
    assert got["Configuration"]["Handler"] == "lambda_function.lambda_handler"
    by_arn = aws.get_function_configuration(FunctionName=made["FunctionArn"])
    assert by_arn["FunctionName"] == "crud"
    assert aws.get_function_configuration(FunctionName="crud:$LATEST")["FunctionName"] == "crud"
    changed = aws.update_function_configuration(FunctionName="crud", MemorySize=512,
                                                Description="second")
    assert (changed["MemorySize"], changed["Description"], changed["Timeout"]) == (
        512, "second", 7)
    new_code = lambda_zip(LAMBDA_FUNCTION + "\n# changed\n")
    updated = aws.update_function_code(FunctionName="crud", ZipFile=new_code)
    assert base64.b64decode(updated["CodeSha256"]) == hashlib.sha256(new_code).digest()
    assert updated["MemorySize"] == 512  # configuration kept across a code update
    aws.delete_function(FunctionName="crud")
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.get_function(FunctionName="crud")
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.invoke(FunctionName="crud")


def test_bad_input_raises_botos_exception_classes(aws: Any) -> None:
    with pytest.raises(aws.exceptions.InvalidParameterValueException):
        create(aws, "bad-handler", Handler="no_dot_here")
    with pytest.raises(aws.exceptions.InvalidParameterValueException):
        create(aws, "bad-env", Environment={"Variables": {"1BAD": "x"}})
    with pytest.raises(aws.exceptions.InvalidParameterValueException):
        create(aws, "bad-runtime", Runtime="nodejs20.x")
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.get_function_configuration(FunctionName="never-made")
    create(aws, "sized")
    with pytest.raises(aws.exceptions.RequestTooLargeException):
        aws.invoke(FunctionName="sized", Payload=b'"' + b"x" * (7 * 1024 * 1024) + b'"')


def test_invoke_with_log_tail_function_errors_event_and_dry_run(aws: Any) -> None:
    create(aws, "echo", MemorySize=192, Environment={"Variables": {"GREETING": "hello"}})
    r = aws.invoke(FunctionName="echo", Payload=json.dumps({"n": 1}), LogType="Tail")
    assert r["StatusCode"] == 200 and r["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in r
    value = json.loads(r["Payload"].read())
    assert value["event"] == {"n": 1} and value["function_name"] == "echo"
    assert value["function_version"] == "$LATEST" and value["memory"] == 192
    assert value["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert value["log_group"] == "/aws/lambda/echo" and value["log_stream"]
    assert 0 < value["remaining_ms"] <= 3000
    assert value["identity"] is None and value["client_context"] is None
    assert value["env"] == {"AWS_LAMBDA_FUNCTION_NAME": "echo",
                            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "192",
                            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_REGION": "us-east-1",
                            "_HANDLER": "lambda_function.lambda_handler", "GREETING": "hello"}
    log = base64.b64decode(r["LogResult"]).decode()
    assert 'printed {"n": 1}' in log
    assert "[INFO]\t" in log and f"\t{value['request_id']}\tlogged at info" in log
    failed = aws.invoke(FunctionName="echo", Payload=b'{"fail": true}')
    assert failed["StatusCode"] == 200 and failed["FunctionError"] == "Unhandled"
    body = json.loads(failed["Payload"].read())
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "it failed as asked"
    assert any("lambda_handler" in line for line in body["stackTrace"])
    assert aws.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"] == 204
    queued = aws.invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"async": 1}')
    assert queued["StatusCode"] == 202
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.invoke(FunctionName="echo", Qualifier="7")  # no published versions yet


def test_list_functions_pages_with_marker_and_max_items(aws: Any) -> None:
    for i in range(5):
        create(aws, f"page-{i}")
    seen: list[str] = []
    pages = 0
    for page in aws.get_paginator("list_functions").paginate(
            PaginationConfig={"PageSize": 2}):
        pages += 1
        assert len(page["Functions"]) <= 2
        seen += [f["FunctionName"] for f in page["Functions"]]
    assert [n for n in seen if n.startswith("page-")] == [f"page-{i}" for i in range(5)]
    assert len(seen) == len(set(seen)) and pages == -(-len(seen) // 2)


def test_reserved_concurrency_and_account_settings(aws: Any) -> None:
    create(aws, "limited")
    before = aws.get_account_settings()["AccountLimit"]
    assert aws.get_function_concurrency(FunctionName="limited").get(
        "ReservedConcurrentExecutions") is None
    put = aws.put_function_concurrency(FunctionName="limited", ReservedConcurrentExecutions=0)
    assert put["ReservedConcurrentExecutions"] == 0
    assert aws.get_function_concurrency(FunctionName="limited")[
        "ReservedConcurrentExecutions"] == 0
    with pytest.raises(aws.exceptions.TooManyRequestsException):  # reserved 0: throttled
        aws.invoke(FunctionName="limited")
    aws.put_function_concurrency(FunctionName="limited", ReservedConcurrentExecutions=3)
    after = aws.get_account_settings()["AccountLimit"]
    assert after["ConcurrentExecutions"] == before["ConcurrentExecutions"]
    assert after["UnreservedConcurrentExecutions"] == before["UnreservedConcurrentExecutions"] - 3
    assert aws.invoke(FunctionName="limited")["StatusCode"] == 200
    aws.delete_function_concurrency(FunctionName="limited")
    assert aws.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == (
        before["UnreservedConcurrentExecutions"])


def test_provisioned_concurrency_keeps_a_versions_instances_ready(aws: Any) -> None:
    create(aws, "provisioned")
    aws.publish_version(FunctionName="provisioned")
    aws.create_alias(FunctionName="provisioned", Name="ready", FunctionVersion="1")
    with pytest.raises(aws.exceptions.InvalidParameterValueException):  # not on $LATEST
        aws.put_provisioned_concurrency_config(FunctionName="provisioned", Qualifier="$LATEST",
                                               ProvisionedConcurrentExecutions=2)
    with pytest.raises(aws.exceptions.ProvisionedConcurrencyConfigNotFoundException):
        aws.get_provisioned_concurrency_config(FunctionName="provisioned", Qualifier="1")
    put = aws.put_provisioned_concurrency_config(FunctionName="provisioned", Qualifier="ready",
                                                 ProvisionedConcurrentExecutions=2)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert put["RequestedProvisionedConcurrentExecutions"] == 2
    # The instances are forked in the background and HTTP offers no event for it: the
    # status is asked again until READY, for at most 30 s.
    deadline = time.monotonic() + 30
    while True:
        got = aws.get_provisioned_concurrency_config(FunctionName="provisioned", Qualifier="1")
        if got["Status"] == "READY" or time.monotonic() > deadline:
            break
    assert got["Status"] == "READY" and got["AvailableProvisionedConcurrentExecutions"] == 2
    r = aws.invoke(FunctionName="provisioned", Qualifier="ready")
    assert r["ExecutedVersion"] == "1"
    queued = aws.invoke(FunctionName="provisioned", Qualifier="ready", InvocationType="Event",
                        Payload=b'{"queued": true}')
    assert queued["StatusCode"] == 202 and queued["ExecutedVersion"] == "1"
    # It ran, on version 1: its result, through the native API's view of the queue (no
    # event for it over HTTP: asked again until done, for at most 30 s).
    request_id = queued["ResponseMetadata"]["RequestId"]
    url = aws.meta.endpoint_url
    deadline = time.monotonic() + 30
    while True:
        row = httpx.get(f"{url}/v1/invocations/{request_id}").json()
        if row["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
    assert row["status"] == "succeeded", row
    assert row["result"]["function_version"] == "1" and row["result"]["event"] == {
        "queued": True}
    dry = aws.invoke(FunctionName="provisioned:1", InvocationType="DryRun")
    assert dry["StatusCode"] == 204
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-fastfaas-start"] == "prewarmed"
    aws.delete_provisioned_concurrency_config(FunctionName="provisioned", Qualifier="1")
    with pytest.raises(aws.exceptions.ProvisionedConcurrencyConfigNotFoundException):
        aws.get_provisioned_concurrency_config(FunctionName="provisioned", Qualifier="1")


def test_the_aws_cli_deploys_invokes_and_reads_the_log_tail(
        server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "function.zip").write_bytes(lambda_zip())
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    aws_cli = [sys.executable, "-m", "awscli", "lambda", "--endpoint-url", server.url]

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run([*aws_cli, *args, "--output", "json"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else {}

    made = run("create-function", "--function-name", "from-cli", "--runtime", "python3.11",
               "--role", "arn:aws:iam::123456789012:role/ignored",
               "--handler", "lambda_function.lambda_handler",
               "--zip-file", "fileb://function.zip")
    assert made["FunctionName"] == "from-cli"
    out = run("invoke", "--function-name", "from-cli", "--payload", '{"from": "cli"}',
              "--log-type", "Tail", "result.json")
    assert out["StatusCode"] == 200
    assert json.loads((tmp_path / "result.json").read_text())["event"] == {"from": "cli"}
    assert "printed" in base64.b64decode(out["LogResult"]).decode()
    names = [f["FunctionName"] for f in run("list-functions")["Functions"]]
    assert "from-cli" in names
    assert run("publish-version", "--function-name", "from-cli")["Version"] == "1"
    alias = run("create-alias", "--function-name", "from-cli", "--name", "live",
                "--function-version", "1")
    assert alias["FunctionVersion"] == "1"
    out = run("invoke", "--function-name", "from-cli", "--qualifier", "live", "result.json")
    assert out["ExecutedVersion"] == "1"
    assert run("put-function-concurrency", "--function-name", "from-cli",
               "--reserved-concurrent-executions", "4")["ReservedConcurrentExecutions"] == 4
    assert run("get-account-settings")["AccountLimit"]["ConcurrentExecutions"] > 0
    assert run("get-function-configuration", "--function-name", "from-cli:1")["Version"] == "1"
    run("delete-alias", "--function-name", "from-cli", "--name", "live")
    run("delete-function", "--function-name", "from-cli")


def test_sigv4_is_verified_with_configured_credentials(start_server: Any) -> None:
    server = start_server("--aws-credentials", "AKIDFASTFAAS:right-secret")

    def client(key_id: str, secret: str) -> Any:
        return boto3.client("lambda", endpoint_url=server.url, region_name="eu-west-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)

    good = client("AKIDFASTFAAS", "right-secret")
    create(good, "signed")
    r = good.invoke(FunctionName="signed", Payload=b'{"signed": true}')
    assert json.loads(r["Payload"].read())["event"] == {"signed": True}
    assert [f["FunctionName"] for f in good.list_functions()["Functions"]] == ["signed"]
    for key_id, secret, code in [("AKIDFASTFAAS", "wrong-secret", "InvalidSignatureException"),
                                 ("AKIDUNKNOWN", "right-secret", "UnrecognizedClientException")]:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            client(key_id, secret).invoke(FunctionName="signed")
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_server_with_a_token_and_no_keys_keeps_the_lambda_api_shut(start_server: Any) -> None:
    server = start_server("--token", "s3cret")
    aws = boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="any", aws_secret_access_key="any")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        aws.list_functions()
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert "--aws-credentials" in caught.value.response["Error"]["Message"]


def test_published_versions_are_immutable_copies(aws: Any) -> None:
    create(aws, "versioned", Description="one")
    first = aws.publish_version(FunctionName="versioned")
    assert first["Version"] == "1" and first["FunctionArn"].endswith(":versioned:1")
    again = aws.publish_version(FunctionName="versioned")  # nothing changed: the same one
    assert again["Version"] == "1"
    aws.update_function_code(FunctionName="versioned",
                             ZipFile=lambda_zip(LAMBDA_FUNCTION.replace("printed", "v2")))
    second = aws.update_function_configuration(FunctionName="versioned", MemorySize=256)
    assert second["Version"] == "$LATEST"
    assert aws.publish_version(FunctionName="versioned")["Version"] == "2"
    listed = aws.list_versions_by_function(FunctionName="versioned")["Versions"]
    assert [v["Version"] for v in listed] == ["$LATEST", "1", "2"]
    assert [v["MemorySize"] for v in listed] == [256, 128, 256]
    r1 = aws.invoke(FunctionName="versioned", Qualifier="1", LogType="Tail")
    assert r1["ExecutedVersion"] == "1"
    assert "printed" in base64.b64decode(r1["LogResult"]).decode()  # the old code
    r2 = aws.invoke(FunctionName="versioned:2", LogType="Tail")
    assert r2["ExecutedVersion"] == "2" and "v2" in base64.b64decode(r2["LogResult"]).decode()
    assert json.loads(r2["Payload"].read())["function_version"] == "2"
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.get_function(FunctionName="versioned", Qualifier="9")
    aws.delete_function(FunctionName="versioned", Qualifier="1")
    assert [v["Version"] for v in aws.list_versions_by_function(
        FunctionName="versioned")["Versions"]] == ["$LATEST", "2"]
    published = create(aws, "born-published", Publish=True)
    assert published["Version"] == "1"
    every = [(f["FunctionName"], f["Version"])
             for page in aws.get_paginator("list_functions").paginate(FunctionVersion="ALL")
             for f in page["Functions"]]
    assert {("versioned", "$LATEST"), ("versioned", "2"), ("born-published", "1")} <= set(every)
    assert ("versioned", "1") not in every  # deleted above


def test_aliases_route_by_their_weights(aws: Any) -> None:
    create(aws, "aliased")
    aws.publish_version(FunctionName="aliased")
    aws.update_function_configuration(FunctionName="aliased", Description="second")
    aws.publish_version(FunctionName="aliased")
    made = aws.create_alias(FunctionName="aliased", Name="live", FunctionVersion="1",
                            Description="the live one")
    assert made["AliasArn"].endswith(":aliased:live") and made["FunctionVersion"] == "1"
    with pytest.raises(aws.exceptions.ResourceConflictException):
        aws.create_alias(FunctionName="aliased", Name="live", FunctionVersion="1")
    assert aws.invoke(FunctionName="aliased", Qualifier="live")["ExecutedVersion"] == "1"
    aws.update_alias(FunctionName="aliased", Name="live",
                     RoutingConfig={"AdditionalVersionWeights": {"2": 0.3}})
    got = aws.get_alias(FunctionName="aliased", Name="live")
    assert got["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.3}}
    calls = 400
    executed = [aws.invoke(FunctionName="aliased:live")["ExecutedVersion"]
                for _ in range(calls)]
    share = executed.count("2") / calls
    # Binomial(400, 0.3): sd 0.023; the alias's generator is seeded, so this repeats.
    assert 0.2 < share < 0.4 and set(executed) == {"1", "2"}, share
    names = [a["Name"] for a in aws.list_aliases(FunctionName="aliased")["Aliases"]]
    assert names == ["live"]
    with pytest.raises(aws.exceptions.ResourceConflictException):  # the alias uses it
        aws.delete_function(FunctionName="aliased", Qualifier="2")
    aws.delete_alias(FunctionName="aliased", Name="live")
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.get_alias(FunctionName="aliased", Name="live")


def test_versions_and_aliases_survive_a_restart(start_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "kept"
    server = start_server(data_dir=data)
    aws = boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    create(aws, "kept", Publish=True)
    aws.create_alias(FunctionName="kept", Name="prod", FunctionVersion="1")
    server.stop()
    again = start_server(data_dir=data)
    aws = boto3.client("lambda", endpoint_url=again.url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    assert [v["Version"] for v in aws.list_versions_by_function(
        FunctionName="kept")["Versions"]] == ["$LATEST", "1"]
    assert aws.invoke(FunctionName="kept", Qualifier="prod")["ExecutedVersion"] == "1"


def test_logging_imported_inside_the_handler_reaches_the_log(aws: Any) -> None:
    source = ("def lambda_handler(event, context):\n"
              "    import logging\n"
              "    logging.getLogger().setLevel(logging.INFO)\n"
              "    logging.getLogger('mine').info('from inside: %s', event['n'])\n"
              "    return event['n']\n")
    aws.create_function(FunctionName="late-logger", Runtime="python3.11", Role="r",
                        Handler="lambda_function.lambda_handler",
                        Code={"ZipFile": lambda_zip(source)})
    logs = [base64.b64decode(aws.invoke(FunctionName="late-logger", Payload=json.dumps(
        {"n": n}), LogType="Tail")["LogResult"]).decode() for n in (1, 2)]
    # The handler brought logging in during the first call: from the second one on
    # (and for the first where it logged after the import) the lines are Lambda's.
    assert "[INFO]\t" in logs[1] and "from inside: 2" in logs[1], logs
