"""The web page at `/` in a real browser: Debian's chromium driven by Playwright, against a real `faceprompt serve`.

The server runs the tiny offline models in a subprocess on a free loopback port; the browser does what a user does
through the page itself: token, upload a photo, generate, watch the progress, download, make again, cancel, delete.
Set ``FACEPROMPT_SCREENSHOT=docs/service-page.png`` to save the page as the README shows it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

TOKEN = "browser-test-token"
#: Debian's chromium: the test fails (never skips) without it, so CI cannot pass without running the browser.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Milliseconds the page may take for what involves the server's models (face analysis, a tiny generation).
SLOW = 30_000
#: Steps (and size) of the job that is still running while the test reloads the page and cancels it: it is stopped
#: long before its end, also on a fast machine.
LONG_STEPS = 999
LONG_SIZE = "128"
#: Upload limit the server runs with (a file one byte over it is refused with 413).
MAX_UPLOAD_MB = 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(process: subprocess.Popen, url: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"faceprompt serve exited with {process.returncode}:\n{log.read_text()[-3000:]}",
                pytrace=False,
            )
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(
        f"faceprompt serve did not answer /healthz within {timeout} s:\n{log.read_text()[-3000:]}",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """A `faceprompt serve --model tiny` with one token, starting (it answers once its imports are done), stopped
    after the module: process, base URL and log."""
    folder = tmp_path_factory.mktemp("serve")
    token_file = folder / "tokens.txt"
    token_file.write_text(f"{TOKEN}\n")
    port = _free_port()
    log = folder / "serve.log"
    command = [
        sys.executable,
        "-m",
        "faceprompt.cli",
        "serve",
        "--model",
        "tiny",
        "--adapter",
        "faceid-sd15",
        "--adaface",
        "tiny",
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
        "--max-queued",
        "1",
        "--port",
        str(port),
        "--data",
        str(folder / "data"),
        "--token-file",
        str(token_file),
    ]
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
    try:
        yield process, f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(serve_process, browser) -> str:
    """Base URL of the server once it answers (chromium was launched while it started)."""
    process, url, log = serve_process
    _wait_until_up(process, url, log)
    return url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no chromium at {CHROMIUM}: install it with `apt-get install -y chromium chromium-driver` "
            "(`make test` does)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def _use_token(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#token-form button")


def _submit(page: Page):
    """Click Generate; the new job's row (the list's first) once it is there."""
    count = page.locator("#jobs li.job").count()
    page.click("#generate-submit")
    expect(page.locator("#jobs li.job")).to_have_count(count + 1)
    return _job_row(page, 0)


def _job_row(page: Page, n: int):
    """The n-th job of the list, newest first."""
    return page.locator("#jobs li.job").nth(n)


def test_a_wrong_token_shows_the_servers_401_message(server, page):
    page.goto(server)
    _use_token(page, "not-the-token")
    expect(page.locator("#token-error")).to_contain_text("Token refused (401)")
    # the server's own sentence, not a generic failure
    request = urllib.request.Request(f"{server}/v1/identities", headers={"Authorization": "Bearer not-the-token"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    expect(page.locator("#token-error")).to_contain_text(json.loads(refused.value.read())["detail"])


def test_upload_generate_watch_make_again_cancel_delete(server, page, astronaut_path):
    page.goto(server)
    _use_token(page, TOKEN)
    expect(page.locator("#token-error")).to_be_hidden()
    identity_id = _upload_identity(page, astronaut_path)

    # a 422 from the server is shown next to the form, naming the field
    page.fill("#prompt", "a portrait on the moon")
    page.fill("#width", "60")
    page.click("#generate-submit")
    expect(page.locator("#generate-error")).to_contain_text("Invalid request (422): width")
    expect(page.locator("#width")).to_have_class("invalid")  # the field it names is marked

    # generate: the job runs and its image appears in the gallery at the size asked for
    for name, value in {
        "width": "64",
        "height": "96",
        "steps": "3",
        "seed": "11",
        "guidance": "5",
        "scale": "0.8",
    }.items():
        page.fill(f"#{name}", value)
    job = _submit(page)
    expect(page.locator("#generate-error")).to_be_hidden()
    expect(page.locator("#width")).not_to_have_class("invalid")
    expect(job.locator(".status")).to_have_text("succeeded", timeout=SLOW)
    expect(job.locator(".steps")).to_have_text("3/3")
    result = page.locator("#gallery li.result-card")
    expect(result).to_have_count(1)
    expect(result.locator("img.result")).to_have_js_property("naturalWidth", 64, timeout=SLOW)
    assert result.locator("img.result").evaluate("image => image.naturalHeight") == 96
    expect(result).to_contain_text("seed 11")
    expect(result.locator(".who")).to_have_text("FaceID: astronaut")

    # download: the PNG the service wrote, parameters embedded
    with page.expect_download() as download:
        result.locator("a.download").click()
    png = Image.open(io.BytesIO(Path(download.value.path()).read_bytes()))
    assert png.size == (64, 96) and json.loads(png.text["faceprompt"])["seed"] == 11

    # make again: a cleared form is refilled from the job's recorded request
    _clear_form(page)
    result.locator("button.again").click()
    _expect_form(page, identity_id, mode="adapter", seed="11", height="96", steps="3")
    assert float(page.input_value("#guidance")) == 5 and float(page.input_value("#scale")) == 0.8

    _generate_with_adaface(page, identity_id)
    _generate_img2img(page, identity_id)
    _watch_reload_and_cancel(page)

    # after a reload the gallery comes from the job list, and make again still refills the form
    page.reload()
    page.locator("#gallery li.result-card button.again").last.click()
    _expect_form(page, identity_id, mode="adapter", seed="11", height="96", steps="3")
    if os.environ.get("FACEPROMPT_SCREENSHOT"):
        _save_screenshot(page, Path(os.environ["FACEPROMPT_SCREENSHOT"]))

    # delete the identity: gone from the page, and from the server (a reload lists none)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#identities li.identity button.delete").click()
    expect(page.locator("#identities li.identity")).to_have_count(0)
    page.reload()
    expect(page.locator("#gallery li.result-card")).to_have_count(3)
    expect(page.locator("#identities li.identity")).to_have_count(0)
    expect(page.locator("#identity")).to_have_value("")

    # delete a finished job: gone from the list and the gallery, and from the server (a reload shows it no more)
    jobs, cards = page.locator("#jobs li.job"), page.locator("#gallery li.result-card")
    job_count, card_count = jobs.count(), cards.count()
    finished = page.locator("#jobs li.job[data-status='succeeded']").first
    job_id = finished.get_attribute("data-id")
    its_cards = page.locator(f"#gallery li.result-card[data-job='{job_id}']").count()
    assert its_cards >= 1
    finished.locator("button.delete").click()
    expect(jobs).to_have_count(job_count - 1)
    expect(cards).to_have_count(card_count - its_cards)
    page.reload()
    expect(cards).to_have_count(card_count - its_cards)
    expect(page.locator(f"#jobs li.job[data-id='{job_id}']")).to_have_count(0)


def _upload_identity(page: Page, photo: Path) -> str:
    """Upload: a file over the size limit is refused (413, naming it); the photo gives an identity with its face."""
    page.set_input_files(
        "#identity-photos",
        files=[
            {
                "name": "huge.png",
                "mimeType": "image/png",
                "buffer": bytes(MAX_UPLOAD_MB * 2**20 + 1),
            }
        ],
    )
    page.click("#identity-submit")
    expect(page.locator("#identity-error")).to_contain_text("Too large (413): huge.png")
    page.fill("#identity-name", "astronaut")
    page.set_input_files("#identity-photos", str(photo))
    page.click("#identity-submit")
    card = page.locator("#identities li.identity")
    expect(card).to_have_count(1, timeout=SLOW)
    expect(page.locator("#identity-error")).to_be_hidden()
    expect(card).to_contain_text("astronaut")
    expect(card.locator("img.face")).to_have_js_property("naturalWidth", 224, timeout=SLOW)  # the aligned crop
    identity_id = card.get_attribute("data-id")
    expect(page.locator("#identity")).to_have_value(identity_id)
    return identity_id


def _generate_with_adaface(page: Page, identity_id: str) -> None:
    """AdaFace: the identity goes in as a placeholder word of the prompt; make again restores that choice."""
    page.select_option("#mode", "adaface")
    page.fill("#placeholder", "z")
    page.fill("#prompt", "a photo of z")
    page.fill("#height", "64")
    expect(_submit(page).locator(".status")).to_have_text("succeeded", timeout=SLOW)
    newest = page.locator("#gallery li.result-card").first
    expect(newest.locator("img.result")).to_have_js_property("naturalHeight", 64, timeout=SLOW)
    expect(newest.locator(".who")).to_have_text("AdaFace: z = astronaut")
    _clear_form(page)
    newest.locator("button.again").click()
    _expect_form(
        page,
        identity_id,
        mode="adaface",
        seed="11",
        height="64",
        steps="3",
        prompt="a photo of z",
    )
    expect(page.locator("#placeholder")).to_have_value("z")


def _generate_img2img(page: Page, identity_id: str) -> None:
    """img2img: the task shows its image input; the chosen file is uploaded and the job's image has its size; make
    again keeps the upload."""
    page.select_option("#mode", "adapter")
    expect(page.locator("#image-label")).to_be_hidden()
    page.select_option("#task", "img2img")
    expect(page.locator("#image-label")).to_be_visible()
    expect(page.locator("#mask_image-label")).to_be_hidden()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, format="PNG")
    page.set_input_files("#image", files=[{"name": "start.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
    page.fill("#prompt", "a portrait on the moon")
    page.fill("#steps", "4")
    page.fill("#strength", "0.5")
    job = _submit(page)
    expect(job.locator(".status")).to_have_text("succeeded", timeout=SLOW)
    expect(job.locator(".steps")).to_have_text("2/2")  # strength 0.5 of 4 steps
    newest = page.locator("#gallery li.result-card").first
    expect(newest.locator("img.result")).to_have_js_property("naturalWidth", 64, timeout=SLOW)
    _clear_form(page)
    page.select_option("#task", "txt2img")
    newest.locator("button.again").click()
    expect(page.locator("#task")).to_have_value("img2img")
    expect(page.locator("#image-kept")).to_contain_text("using upload")
    expect(page.locator("#strength")).to_have_value("0.5")
    page.select_option("#task", "txt2img")
    expect(page.locator("#strength-label")).to_be_hidden()


def _watch_reload_and_cancel(page: Page) -> None:
    """A long job runs, one waits (the next is over the per-token limit: 429); progress moves, also after a reload;
    the queued job is cancelled (it never runs), then the running one (it stops at its next step)."""
    page.select_option("#mode", "adapter")
    page.fill("#steps", str(LONG_STEPS))
    page.fill("#width", LONG_SIZE)
    page.fill("#height", LONG_SIZE)
    expect(_submit(page).locator(".status")).to_have_text("running", timeout=SLOW)
    expect(_submit(page).locator(".status")).to_have_text(re.compile("queued"))
    page.click("#generate-submit")
    expect(page.locator("#generate-error")).to_contain_text("Too many requests (429)")
    long_job, queued_job = _job_row(page, 1), _job_row(page, 0)
    first = _steps_done(long_job)
    page.reload()
    expect(long_job.locator(".steps")).to_have_text(re.compile(rf"^\d+/{LONG_STEPS}$"), timeout=SLOW)
    page.wait_for_function(
        "([row, first]) => parseInt(row.querySelector('.steps').textContent) > first",
        arg=[long_job.element_handle(), first],
        timeout=SLOW,
    )
    assert long_job.locator("progress").evaluate("bar => bar.max") == LONG_STEPS
    queued_job.locator("button.cancel").click()
    expect(queued_job.locator(".status")).to_have_text("cancelled")
    expect(queued_job.locator(".steps")).to_have_text("")  # never started
    long_job.locator("button.cancel").click()
    expect(long_job.locator(".status")).to_have_text("cancelled", timeout=SLOW)
    assert 0 < _steps_done(long_job) < LONG_STEPS
    _clear_form(page)
    long_job.locator("button.again").click()  # a cancelled (or failed) job can be made again too
    expect(page.locator("#steps")).to_have_value(str(LONG_STEPS))
    expect(page.locator("#width")).to_have_value(LONG_SIZE)
    expect(page.locator("#gallery li.result-card")).to_have_count(3)


def _clear_form(page: Page) -> None:
    for name in ("prompt", "width", "height", "steps", "seed", "guidance", "scale"):
        page.fill(f"#{name}", "")
    page.select_option("#identity", "")


def _expect_form(
    page: Page,
    identity_id: str,
    *,
    mode: str,
    prompt: str = "a portrait on the moon",
    **fields,
) -> None:
    expect(page.locator("#mode")).to_have_value(mode)
    expect(page.locator("#identity")).to_have_value(identity_id)
    expect(page.locator("#prompt")).to_have_value(prompt)
    expect(page.locator("#width")).to_have_value("64")
    for name, value in fields.items():
        expect(page.locator(f"#{name}")).to_have_value(value)


def _steps_done(row) -> int:
    text = row.locator(".steps").text_content() or "0/0"
    return int(text.split("/")[0] or 0)


def _save_screenshot(page: Page, path: Path) -> None:
    """The whole page as a 256-colour PNG (the README's picture stays small)."""
    raw = Image.open(io.BytesIO(page.screenshot(full_page=True)))
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.convert("RGB").quantize(colors=256).save(path, optimize=True)
