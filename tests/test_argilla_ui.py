"""Argilla's own Vue UI on the embedded server, driven by Debian chromium through playwright.

Signs in with the generated owner password, opens a dataset, filters by a metadata term through
the Filters dropdown (terms listed by our engine's compute_metrics_for, records by its /me search),
submits a label, and checks through the SDK that the response landed. Needs /usr/bin/chromium
(.ci/install_browser.sh) and the `playwright` package; playwright cannot download browsers here.
"""
from __future__ import annotations

import shutil
import tempfile

import pytest

rg = pytest.importorskip("argilla")
sync_api = pytest.importorskip("playwright.sync_api")

try:
    from tests.conftest_argilla import EmbeddedServer, shared_server, stop_shared_server
except ImportError:
    from conftest_argilla import EmbeddedServer, shared_server, stop_shared_server

from labeling.client import connect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> EmbeddedServer:
    yield shared_server(tmp_path_factory)
    stop_shared_server()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if shutil.which(CHROMIUM) is None:
        pytest.skip("chromium missing: run .ci/install_browser.sh")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path_factory.getbasetemp())
    with sync_api.sync_playwright() as playwright:
        # playwright passes the profile itself (it refuses --user-data-dir in args)
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_ui_sign_in_filter_and_submit(server, browser_page, tmp_path):
    client = connect(data_dir=server.data_dir)
    settings = rg.Settings(fields=[rg.TextField(name="text")],
                           questions=[rg.LabelQuestion(name="verdict", labels=["good", "bad"])],
                           metadata=[rg.TermsMetadataProperty(name="src")])
    dataset = rg.Dataset(name="ui-test", settings=settings, client=client).create()
    dataset.records.log([rg.Record(id=f"u{i}", fields={"text": f"{'book' if i % 2 else 'web'} sample number {i}"},
                                   metadata={"src": "book" if i % 2 else "web"}) for i in range(6)])
    page = browser_page
    expect = sync_api.expect

    page.goto(f"{server.url}/sign-in")
    page.get_by_label("Username").fill(server.username)
    page.get_by_label("Password").fill(server.password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("ui-test", exact=True).first.click()
    expect(page.get_by_text("sample number").first).to_be_visible(timeout=30_000)
    assert f"/dataset/{dataset.id}/annotation-mode" in page.url

    page.get_by_role("button", name="Filters").click()
    page.get_by_text("Metadata", exact=True).click()
    page.get_by_text("src", exact=True).click()
    options = page.locator(".metadata-filter__container .labels-selector__item")
    expect(options).to_have_count(2)  # terms from compute_metrics_for
    options.filter(has_text="book").locator(".checkbox__container").click()
    page.mouse.click(600, 700)  # close the dropdown: the filter applies
    page.wait_for_url("**metadata=src.book**", timeout=30_000)
    expect(page.get_by_text("1 of 3")).to_be_visible(timeout=30_000)
    shown = page.get_by_text("sample number").first.inner_text()
    assert shown.startswith("book sample number"), shown

    page.get_by_text("good", exact=True).click()
    page.locator("button.button--submit").click()
    page.wait_for_url("**page=2**", timeout=30_000)  # the UI moved on to the next pending record
    current = page.get_by_text("sample number").first
    expect(current).not_to_have_text(shown, timeout=30_000)
    assert current.inner_text().startswith("book sample number")
    progress = page.get_by_role("listitem").filter(has_text="submitted")  # get_dataset_user_progress
    expect(progress).to_contain_text("1", timeout=30_000)
    page.screenshot(path=str(tmp_path / "argilla-ui.png"), full_page=True)
    assert (tmp_path / "argilla-ui.png").stat().st_size > 10_000

    submitted = {}
    for record in dataset.records(with_responses=True):
        for response in record.responses:
            submitted[record.fields["text"]] = (response.question_name, response.value, getattr(response.status, "value", response.status))
    assert submitted == {shown.strip(): ("verdict", "good", "submitted")}
