"""``defender_backend: openai`` against a real OpenAI-compatible server: ``transformers serve`` on a tiny model
built here, started once for the module. The failures a server can have (no answer, 500s, malformed replies,
dropped connections, a rejected key) come from a small fault-injecting proxy in front of it: each is retried or
reported as one line with exit code 2, and no report is written.
"""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import build_tiny_model

from redgym.cli import main
from redgym.errors import RedgymError
from redgym.models.base import ChatBackend, LikelihoodBackend, chat_messages

pytest.importorskip("openai", reason="the http extra (openai) is not installed")
pytest.importorskip("fastapi", reason="transformers[serving] (fastapi, uvicorn) is not installed")

KEY_ENV, KEY = "REDGYM_TEST_DEFENDER_KEY", "sk-redgym-test-0123456789-do-not-log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 60.0) -> None:
    """Poll until the server answers, then send one chat request: it loads the model on the first one, which
    would otherwise time out the tests' 1 s requests."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited early:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        pytest.fail(f"transformers serve not ready after {deadline_s:g} s:\n{log.read_text()[-2000:]}")
    warm_up = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    req = urllib.request.Request(f"{url}/chat/completions", data=warm_up, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=max(1.0, end - time.monotonic())) as r:
        r.read()


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory) -> Path:
    path = build_tiny_model(tmp_path_factory.mktemp("served"))
    # transformers serve hands every tokenizer output to generate(), and a Llama rejects token_type_ids
    config = path / "tokenizer_config.json"
    inputs = {"model_input_names": ["input_ids", "attention_mask"]}
    config.write_text(json.dumps(json.loads(config.read_text()) | inputs))
    return path


@pytest.fixture(scope="module")
def server(served_dir, tmp_path_factory):
    """``http://127.0.0.1:PORT/v1`` of ``transformers serve`` answering every request with the tiny model."""
    cli = Path(sys.executable).with_name("transformers")
    if not cli.exists():
        pytest.skip("the transformers CLI is not installed next to this Python")
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                str(cli),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
                "--force_model",
                str(served_dir),
                "--log_level",
                "warning",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class FaultProxy:
    """A local HTTP server in front of ``upstream``: requests whose method is in ``methods`` get ``mode``'s fault
    (the first ``faults`` of them; -1: all), everything else is passed through, ``delay_s`` late (so that
    concurrent requests overlap; ``max_in_flight`` counts how many did).

    Modes: ``timeout`` (say nothing for ``hang_s``, then hang up), ``500``, ``401``, ``malformed`` (a 200 event
    stream whose event is not JSON), ``bad-json`` (a 200 JSON body cut short), ``broken`` (a 200 event stream cut
    off mid-event), ``close`` (hang up without answering).
    """

    def __init__(
        self,
        upstream: str,
        mode: str,
        faults: int = -1,
        methods=("POST",),
        hang_s: float = 2.0,
        delay_s: float = 0.0,
        after: int = 0,
    ):
        self.upstream, self.mode, self.faults, self.methods, self.hang_s = upstream, mode, faults, methods, hang_s
        self.after, self.passed = after, 0  # the first ``after`` requests in ``methods`` pass, then the faults start
        self.delay_s, self.faulted, self.in_flight, self.max_in_flight = delay_s, 0, 0, 0
        self.lock = threading.Lock()
        self.auth: list[str | None] = []  # each request's Authorization header, in arrival order
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                proxy.handle(self, "GET")

            def do_POST(self):
                proxy.handle(self, "POST")

            def log_message(self, *args):  # quiet: the test reads stderr for the CLI's one line
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client hanging up on a sleeping handler is expected
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        with self.lock:
            self.auth.append(h.headers.get("Authorization"))  # what the client sent, for the API-key test
        if method in self.methods and self.passed >= self.after and (self.faults < 0 or self.faulted < self.faults):
            self.faulted += 1
            return self.fault(h)
        if method in self.methods:
            self.passed += 1
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            req = urllib.request.Request(
                self.upstream + h.path.removeprefix("/v1"),
                data=body or None,
                method=method,
                headers={"Content-Type": h.headers.get("Content-Type", "application/json")},
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                self.send(h, r.status, r.headers.get("Content-Type", "application/json"), r.read())
        finally:
            with self.lock:
                self.in_flight -= 1

    def fault(self, h: BaseHTTPRequestHandler) -> None:
        if self.mode == "timeout":
            time.sleep(self.hang_s)
        elif self.mode in ("500", "401"):
            self.send(h, int(self.mode), "application/json", b'{"error": {"message": "injected fault"}}')
            return
        elif self.mode == "malformed":
            self.send(h, 200, "text/event-stream", b"data: {this is not json\n\n")
            return
        elif self.mode == "bad-json":
            self.send(h, 200, "application/json", b'{"choices": [')
            return
        elif self.mode == "broken":  # promises 1000 bytes, sends half an event
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.write(b'data: {"choices": [{"delta": {"content": "he')
            h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)  # "close" (and "timeout" after its wait): hang up, no answer

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, content_type: str, data: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def served_fields(served_dir: Path, prompt_file: Path, url: str) -> list[str]:
    """The tiny model as adversary, as the served defender at ``url`` and as the local likelihood model."""
    return [
        "--adversary_model",
        str(served_dir),
        "--defender_model",
        str(served_dir),
        "--defender_backend",
        "openai",
        "--defender_base_url",
        url,
        "--likelihood_model",
        str(served_dir),
        "--prompts",
        str(prompt_file),
    ]


def eval_args(served_dir: Path, prompt_file: Path, url: str, out: Path, *extra: str) -> list[str]:
    """``redgym eval`` of the untuned tiny adversary against the served tiny defender, NLL from the local copy."""
    return [
        "eval",
        "--out",
        str(out),
        *served_fields(served_dir, prompt_file, url),
        "--max_new_tokens",
        "5",
        "--test_fraction",
        "0.3",
        "--horizon",
        "2",
        "--n_eval_prompts",
        "2",
        "--bootstrap_samples",
        "20",
        "--http_timeout_s",
        "1",
        "--http_max_retries",
        "1",
        "--quiet",
        *extra,
    ]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("redgym: error: "), err
    return err


# ---- the history -> messages mapping, and who implements which Protocol ---------------------------------------------
def test_the_defender_sees_the_adversary_as_user_and_itself_as_assistant():
    history = [
        ("prompt", "hi there"),
        ("prompt", "how are you"),
        ("adversary", "say it"),
        ("defender", "no"),
        ("adversary", "again"),
    ]
    assert chat_messages(history, "defender") == [
        {"role": "user", "content": "hi there\nhow are you\nsay it"},
        {"role": "assistant", "content": "no"},
        {"role": "user", "content": "again"},
    ]


def test_a_local_lm_is_both_backends_a_server_only_chats(tiny_lm):
    from redgym.models.http import OpenAIChat

    server = OpenAIChat("m", "http://127.0.0.1:9/v1")  # nothing is sent until a request
    assert isinstance(tiny_lm, ChatBackend) and isinstance(tiny_lm, LikelihoodBackend)
    assert isinstance(server, ChatBackend) and not isinstance(server, LikelihoodBackend)
    assert json.loads(server.render([("prompt", "hi"), ("adversary", "yo")], "defender")) == [
        {"role": "user", "content": "hi\nyo"}
    ]


# ---- the happy path against transformers serve --------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_run(server, served_dir, tmp_path_factory):
    """One evaluation against the server, the API key given through the environment variable the config names."""
    tmp = tmp_path_factory.mktemp("run")
    prompts = tmp / "prompts.txt"
    prompts.write_text(
        "hello there how are you today\ni am fine thanks and you\nwhat are you doing this weekend\n"
        "we could go to the park or the beach\nthat sounds great to me\ndo you like music or films\n",
        encoding="utf-8",
    )
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        rc = main(eval_args(served_dir, prompts, server, out, "--defender_api_key_env", KEY_ENV))
    return rc, out, prompts


def test_eval_against_transformers_serve_writes_a_report_with_request_counts(served_run):
    rc, out, _ = served_run
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    defender_turns = [t for r in rows for t in r["turns"] if t["speaker"] == "defender"]
    assert report["n_conversations"] == len(rows) == 2 and len(defender_turns) == 2 * 2  # horizon 2
    assert all(isinstance(t["text"], str) and t["n_tokens"] == 0 for t in defender_turns)  # texts only
    assert any(t["text"] for t in defender_turns)  # the server said something
    # one GET /models check, then one streamed chat request per defender turn; none failed
    assert report["http"] == {"requests": 1 + len(defender_turns), "retries": 0, "failures": 0, "tokens": 0}
    # the NLL term came from the local likelihood model
    nll = [t["nll"] for r in rows for t in r["turns"] if t["speaker"] == "adversary"]
    assert len(nll) == 4 and all(0 < x < 100 for x in nll)
    assert report["config"]["defender_backend"] == "openai" and report["config"]["defender_api_key_env"] == KEY_ENV


def test_the_api_key_never_reaches_a_file_the_run_writes(served_run, capsys):
    rc, out, _ = served_run
    assert rc == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"report.json", "samples.jsonl", "config.yaml"} <= {p.name for p in files}
    assert not [p.name for p in files if KEY.encode() in p.read_bytes()]
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err


def test_the_api_key_is_sent_with_every_request(server, served_run, served_dir, tmp_path, monkeypatch):
    """The key named by defender_api_key_env goes out as a bearer token on every request (the model check and each
    chat request), read from the environment at run time."""
    _, _, prompts = served_run
    proxy = FaultProxy(server, "500", faults=0)  # passes everything through, recording headers
    monkeypatch.setenv(KEY_ENV, KEY)
    assert main(eval_args(served_dir, prompts, proxy.url, tmp_path / "o", "--defender_api_key_env", KEY_ENV)) == 0
    assert len(proxy.auth) == 1 + 2 * 2 and set(proxy.auth) == {f"Bearer {KEY}"}  # GET /models + 4 replies


def test_a_500_then_success_is_retried_and_counted(server, served_run, served_dir, tmp_path):
    _, _, prompts = served_run
    proxy = FaultProxy(server, "500", faults=1)
    try:
        assert main(eval_args(served_dir, prompts, proxy.url, tmp_path / "o")) == 0
    finally:
        proxy.stop()
    http = json.loads((tmp_path / "o" / "report.json").read_text())["http"]
    assert proxy.faulted == 1 and http["retries"] == 1 and http["failures"] == 0


@pytest.mark.parametrize("concurrency", [1, 2])
def test_requests_in_flight_never_exceed_http_concurrency(concurrency, server, served_run, served_dir, tmp_path):
    _, _, prompts = served_run
    proxy = FaultProxy(server, "none", faults=0, delay_s=0.3)  # no faults: slow pass-through, so requests overlap
    try:
        args = eval_args(
            served_dir,
            prompts,
            proxy.url,
            tmp_path / "o",
            "--http_concurrency",
            str(concurrency),
            "--n_eval_prompts",
            "3",
            "--horizon",
            "1",
        )
        assert main(args) == 0
    finally:
        proxy.stop()
    assert proxy.max_in_flight == concurrency  # 3 defender replies per turn, at most `concurrency` at once


# ---- failures: one line, exit 2, no report -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, says",
    [
        ("timeout", "no answer within 1 s"),
        ("500", "answered HTTP 500"),
        ("malformed", "malformed"),
        ("bad-json", "malformed"),
        ("broken", "broken"),
        ("close", "connection failed"),
    ],
)
def test_a_failing_server_is_one_line_and_no_report(mode, says, server, served_run, served_dir, tmp_path, capsys):
    _, _, prompts = served_run
    proxy = FaultProxy(server, mode, hang_s=1.5)
    out = tmp_path / "o"
    try:
        # one request at a time, so the count of faulted requests is exact
        assert main(eval_args(served_dir, prompts, proxy.url, out, "--http_concurrency", "1")) == 2
    finally:
        proxy.stop()
    err = one_line_error(capsys)
    print(err)
    assert says in err and proxy.url in err
    assert not (out / "report.json").exists() and not (out / "samples.jsonl").exists()
    # the client retries timeouts, 500s and dropped connections once (http_max_retries 1), then the batch stops;
    # a reply that breaks after its status line is not retried
    assert proxy.faulted == (1 if mode in ("malformed", "bad-json", "broken") else 2)


def test_a_rejected_key_is_one_line(server, served_run, served_dir, tmp_path, capsys, monkeypatch):
    _, _, prompts = served_run
    monkeypatch.setenv(KEY_ENV, KEY)
    proxy = FaultProxy(server, "401", methods=("GET", "POST"))
    try:
        rc = main(eval_args(served_dir, prompts, proxy.url, tmp_path / "o", "--defender_api_key_env", KEY_ENV))
    finally:
        proxy.stop()
    err = one_line_error(capsys)
    assert rc == 2 and f"rejected the key in ${KEY_ENV}" in err and KEY not in err
    assert not (tmp_path / "o").exists()


def test_an_unreachable_server_is_one_line(served_run, served_dir, tmp_path, capsys):
    _, _, prompts = served_run
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert main(eval_args(served_dir, prompts, url, tmp_path / "o")) == 2
    assert "connection failed" in one_line_error(capsys)


def test_completions_on_a_server_without_them_is_one_line(server, served_run, served_dir, tmp_path, capsys):
    _, _, prompts = served_run  # transformers serve has no /v1/completions
    assert main(eval_args(served_dir, prompts, server, tmp_path / "o", "--defender_api", "completions")) == 2
    assert "POST /completions answered HTTP 404" in one_line_error(capsys)


@pytest.mark.parametrize(
    "extra, says",
    [
        ((), "set likelihood_model"),
        (("--likelihood_model", "x", "--defender_api_key_env", "REDGYM_UNSET_KEY"), "REDGYM_UNSET_KEY is not set"),
    ],
)
def test_set_up_mistakes_are_one_line(extra, says, prompt_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REDGYM_UNSET_KEY", raising=False)
    args = [
        "eval",
        "--out",
        str(tmp_path / "o"),
        "--defender_backend",
        "openai",
        "--defender_base_url",
        "http://127.0.0.1:9/v1",
        "--prompts",
        str(prompt_file),
        "--quiet",
        *extra,
    ]
    assert main(args) == 2
    assert says in one_line_error(capsys)


# ---- the NLL term from the server's own log-probs (api: completions with echo) -----------------------------------
def test_the_continuation_nll_is_read_from_echoed_offsets_by_hand():
    from redgym.models.http import continuation_nll_from_offsets

    # "Hi." + " you ok": tokens "Hi" "." " you" " ok" at offsets 0, 2, 3, 7; the first token has no log-prob
    offsets, logprobs = [0, 2, 3, 7], [None, -1.0, -2.0, -1.0]
    assert continuation_nll_from_offsets(3, 10, offsets, logprobs) == pytest.approx(1.5)  # (2.0 + 1.0) / 2
    assert continuation_nll_from_offsets(0, 3, offsets, logprobs) == pytest.approx(1.0)  # "Hi" unscored: skipped
    assert math.isnan(continuation_nll_from_offsets(10, 12, offsets, logprobs))  # nothing starts there


def test_a_completions_server_scores_the_nll_term_itself(prompt_file, tmp_path):
    from redgym.config import RunConfig, load_config
    from redgym.models.http import OpenAIChat, ServerLikelihood
    from redgym.setup import load_likelihood

    fields = dict(defender_backend="openai", defender_base_url="http://127.0.0.1:9/v1", prompts=str(prompt_file))
    cfg = load_config(RunConfig, None, {**fields, "defender_api": "completions"})
    assert isinstance(load_likelihood(cfg, OpenAIChat("m", cfg.defender_base_url, api="completions")), ServerLikelihood)
    with pytest.raises(RedgymError, match="defender_api chat cannot score"):
        load_config(RunConfig, None, fields)


def test_a_server_without_prompt_log_probs_is_one_line(server):
    from redgym.models.http import OpenAIChat, ServerLikelihood

    scorer = ServerLikelihood(OpenAIChat("m", server, api="completions", max_retries=0))
    with pytest.raises(RedgymError, match=r"POST /completions \(echo, logprobs\) answered HTTP 404"):
        scorer.continuation_nll(["hello there\n"], ["how are you"])


# ---- training against the server (issue: red-team a model you do not hold) ------------------------------------


def train_args(served_dir: Path, prompts: Path, url: str, out: Path, *extra: str, trainer: str = "grpo") -> list[str]:
    """``redgym train`` of a tiny adversary against the served tiny defender: 2 prompts x 2 samples a step, each
    answered once (4 chat requests a step), the NLL term from the local copy, a checkpoint every step."""
    return [
        "train",
        trainer,
        "--out",
        str(out),
        *served_fields(served_dir, prompts, url),
        "--max_new_tokens",
        "4",
        "--test_fraction",
        "0.3",
        "--steps",
        "2",
        "--prompts_per_step",
        "2",
        "--micro_batch_size",
        "4",
        "--checkpoint_every",
        "1",
        "--eval_after",
        "false",
        "--http_timeout_s",
        "2",
        "--http_max_retries",
        "1",
        "--quiet",
        *extra,
    ]


def rows_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_trains_against_the_server_counts_its_requests_and_resumes(server, served_run, served_dir, tmp_path):
    _, _, prompts = served_run
    out = tmp_path / "run"
    assert main(train_args(served_dir, prompts, server, out, "--generations_per_prompt", "2")) == 0
    rows = rows_of(out)
    # step 1: the GET /models check and 2 x 2 replies; step 2: 4 replies; none retried or failed
    assert [r["http/requests"] for r in rows] == [5, 4] and [r["http/total_requests"] for r in rows] == [5, 9]
    assert all(r["http/retries"] == r["http/failures"] == r["http/skipped_steps"] == 0 for r in rows)
    assert all(math.isfinite(r["loss/policy"]) for r in rows)
    assert (out / "checkpoints" / "step_000002" / "trainer_state.json").exists()
    # resumed for a third step: a new process checks the server again, and the run's total goes on
    assert main(["train", "grpo", "--resume", str(out), "--steps", "3", "--quiet"]) == 0
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["http/total_requests"] == 9 + 5


def test_ipo_trains_a_step_against_the_server(server, served_run, served_dir, tmp_path):
    _, _, prompts = served_run
    out = tmp_path / "run"
    args = train_args(served_dir, prompts, server, out, "--steps", "1", "--horizon", "1", trainer="ipo")
    args += ["--weak_supervision", "0"]
    assert main(args) == 0
    (row,) = rows_of(out)
    # 2 prompts, 2 samples per tree node at horizon 1: 4 replies, and the check
    assert row["http/requests"] == 5 and row["http/failures"] == 0
    assert (out / "adversary" / "adapter_model.safetensors").is_file()


def test_a_server_failing_mid_run_stops_at_the_last_checkpoint_and_resumes(
    server, served_run, served_dir, tmp_path, capsys
):
    _, _, prompts = served_run
    out = tmp_path / "run"
    proxy = FaultProxy(server, "500", after=4)  # step 1's 4 replies pass; every later one answers 500
    try:
        assert main(train_args(served_dir, prompts, proxy.url, out, "--generations_per_prompt", "2")) == 2
    finally:
        proxy.stop()
    err = one_line_error(capsys)
    assert "answered HTTP 500" in err and f"resume with: redgym train grpo --resume {out}" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]  # nothing of step 2
    assert [r["step"] for r in rows_of(out)] == [1]
    # the server is back: resume against it, and every step is logged once
    assert main(["train", "grpo", "--resume", str(out), "--defender_base_url", server, "--quiet"]) == 0
    assert [r["step"] for r in rows_of(out)] == [1, 2]


def test_with_http_skip_failed_steps_a_failed_step_is_skipped_and_counted(server, served_run, served_dir, tmp_path):
    _, _, prompts = served_run
    out = tmp_path / "run"
    proxy = FaultProxy(server, "close", faults=2, after=4)  # step 2's first reply: dropped, and dropped on retry
    try:
        args = train_args(served_dir, prompts, proxy.url, out, "--generations_per_prompt", "2", "--steps", "3")
        args += ["--http_concurrency", "1"]  # one request at a time: the dropped one and its retry are the same
        assert main([*args, "--http_skip_failed_steps", "true"]) == 0
    finally:
        proxy.stop()
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["http/skipped_steps"] for r in rows] == [0, 1, 1]
    assert "loss/policy" not in rows[1] and math.isfinite(rows[2]["loss/policy"])  # step 2 trained nothing
    assert rows[1]["http/failures"] == 1


def test_the_request_budget_stops_the_run_in_one_line(server, served_run, served_dir, tmp_path, capsys):
    _, _, prompts = served_run
    out = tmp_path / "run"
    args = train_args(served_dir, prompts, server, out, "--generations_per_prompt", "2", "--http_max_requests", "7")
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "http_max_requests 7 reached" in err and "resume with: redgym train grpo --resume" in err
    assert [r["http/total_requests"] for r in rows_of(out)] == [5]  # step 1 (5 requests) finished; step 2 not
