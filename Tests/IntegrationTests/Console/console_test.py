#!/usr/bin/env python3
"""Drives the steward's console of a running fem-client daemon in headless Chromium (Debian's chromium and
chromium-driver, both paths pinned so Selenium Manager downloads nothing). Called by ConsoleTests.swift:

    console_test.py BASE_URL TASK_ID SCREENSHOT_DIR

Passwords come from the environment (CONSOLE_STEWARD, CONSOLE_STEWARD_PASSWORD, CONSOLE_VIEWER,
CONSOLE_VIEWER_PASSWORD), never argv. Each check prints `ok: ...`; the first failing one prints `FAIL: ...` and
exits 1."""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

BASE, TASK, SHOTS = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
STEWARD, STEWARD_PW = os.environ["CONSOLE_STEWARD"], os.environ["CONSOLE_STEWARD_PASSWORD"]
VIEWER, VIEWER_PW = os.environ["CONSOLE_VIEWER"], os.environ["CONSOLE_VIEWER_PASSWORD"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def fail(what):
    print(f"FAIL: {what}", flush=True)
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    print(f"ok: {what}", flush=True)


for path in (CHROMIUM, CHROMEDRIVER):
    if not os.access(path, os.X_OK):
        fail(f"{path} is missing: install Debian's chromium and chromium-driver")

opts = webdriver.ChromeOptions()
opts.binary_location = CHROMIUM
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
    opts.add_argument(a)
drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
wait = WebDriverWait(drv, 15)


def shot(name):
    """The whole page (the window grown to its height, at most 3000 px), then back to 1280x1000."""
    path = os.path.join(SHOTS, name)
    height = drv.execute_script("return document.documentElement.scrollHeight")
    drv.set_window_size(1280, min(max(height + 140, 700), 3000))
    drv.save_screenshot(path)
    drv.set_window_size(1280, 1000)
    print(f"ok: screenshot {path}", flush=True)


def text(by, what):
    return drv.find_element(by, what).text


def login(account, password):
    drv.get(BASE + "/login")
    wait.until(EC.presence_of_element_located((By.ID, "login-form")))
    drv.find_element(By.ID, "account").send_keys(account)
    drv.find_element(By.ID, "password").send_keys(password)
    drv.find_element(By.ID, "login").click()


def logout():
    drv.find_element(By.ID, "logout").click()
    wait.until(EC.presence_of_element_located((By.ID, "login-form")))
    check(drv.get_cookie("fem_console") is None, "logging out removes the session cookie")


def still_waiting(after):
    drv.get(BASE + "/tasks/" + TASK)
    state = wait.until(EC.presence_of_element_located((By.ID, "task-state"))).text
    check(state == "awaiting_approval", f"after {after} the task is still awaiting_approval (it is {state})")


def post(path, fields, cookie, origin=None):
    """A form POST outside the browser, as a forged page would send it."""
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(BASE + path, data=data, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    req.add_header("Cookie", f"fem_console={cookie}")
    if origin:
        req.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


try:
    # 1. The login page; a wrong password and an unknown account get the same answer, and no session.
    drv.get(BASE + "/")
    wait.until(EC.presence_of_element_located((By.ID, "login-form")))
    check(drv.current_url.endswith("/login"), "a visitor without a session is sent to the login page")
    shot("login.png")
    login(STEWARD, STEWARD_PW + "-wrong")
    err = wait.until(EC.presence_of_element_located((By.ID, "login-error"))).text
    check(err == "Wrong account or password.", f"a wrong password is refused on the login page ({err!r})")
    check(drv.get_cookie("fem_console") is None, "a wrong password gets no session cookie")
    login("nobody-" + STEWARD, STEWARD_PW)
    err2 = wait.until(EC.presence_of_element_located((By.ID, "login-error"))).text
    check(err2 == err, "an unknown account gets the same message as a wrong password")

    # 2. A viewer sees the review page but may not decide: 403 naming the role.
    login(VIEWER, VIEWER_PW)
    wait.until(EC.presence_of_element_located((By.ID, "tasks")))
    still_waiting("the failed logins")
    drv.get(BASE + "/outputs/" + TASK)
    wait.until(EC.presence_of_element_located((By.ID, "decide-form")))
    drv.find_element(By.ID, "reason").send_keys("a viewer tries")
    drv.find_element(By.ID, "approve").click()
    msg = wait.until(EC.presence_of_element_located((By.ID, "message"))).text
    check("needs the steward role" in msg and "viewer role" in msg, f"a viewer's approval is refused naming the role ({msg!r})")
    still_waiting("the viewer's attempt")
    logout()

    # 3. The steward: tasks (live), the timeline, the review page with its previews.
    login(STEWARD, STEWARD_PW)
    wait.until(EC.presence_of_element_located((By.ID, "tasks")))
    cookie = drv.get_cookie("fem_console")
    check(cookie is not None and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict",
          f"the session cookie is HttpOnly and SameSite=Strict ({cookie})")
    check(len(cookie["value"]) == 64, "the session id is 256 random bits (64 hex digits)")
    wait.until(EC.text_to_be_present_in_element((By.ID, "live"), "live, updated"))
    cell = drv.find_element(By.CSS_SELECTOR, f'td[data-state-for="{TASK}"]')
    check(cell.text == "awaiting_approval", f"the task list shows the task awaiting approval ({cell.text})")
    shot("tasks.png")

    drv.get(BASE + "/tasks/" + TASK)
    wait.until(EC.presence_of_element_located((By.ID, "events")))
    events = text(By.ID, "events")
    check("awaiting_approval" in events, "the timeline lists the task's events")
    check("console-stdout-marker" in text(By.ID, "log-stdout-log"), "the timeline shows the tail of stdout.log")
    shot("timeline.png")

    drv.get(BASE + "/outputs/" + TASK)
    wait.until(EC.presence_of_element_located((By.ID, "decide-form")))
    tables = drv.find_elements(By.CSS_SELECTOR, "table.csv")
    check(len(tables) == 1, "the CSV file is previewed as a table")
    cells = [[c.text for c in row.find_elements(By.CSS_SELECTOR, "th,td")] for row in tables[0].find_elements(By.TAG_NAME, "tr")]
    check(cells[0] == ["site", "count", "note"], f"the CSV header row ({cells[0]})")
    check(cells[1] == ["north", "42", "aggregate"], f"a CSV cell: north/42 ({cells[1]})")
    check(cells[2][2] == "<script>window.__pwned = 1</script>", f"a CSV cell with <script> is shown as text ({cells[2]})")
    paths = [c.text for c in drv.find_elements(By.CSS_SELECTOR, "#files td.path")]
    check("out/<script>window.__pwned=2<script>.txt" in paths, f"a file name with <script> is shown as text ({paths})")
    check(drv.execute_script("return window.__pwned === undefined"), "no tool-chosen script ran")
    check("upload-login" in text(By.ID, "destination") and "http://127.0.0.1:18080/dav/" in text(By.ID, "destination"),
          "the review page shows the destination and the credentials' name")
    imgs = drv.find_elements(By.CSS_SELECTOR, "section.preview img")
    check(len(imgs) == 1 and drv.execute_script("return arguments[0].naturalWidth", imgs[0]) == 48,
          "the PNG output is previewed as an image (served by the console, 48 px wide)")
    sha = text(By.ID, "manifest-sha")
    check(len(sha) == 64, "the review page shows the manifest's sha256")
    shot("review.png")

    # 4. Forged POSTs with the steward's valid session cookie: no CSRF token, and a token from another origin.
    status, body = post(f"/outputs/{TASK}/decide", {"decision": "approve", "reason": "forged"}, cookie["value"])
    check(status == 403 and "CSRF check" in body, f"a POST without the CSRF token is refused by the CSRF check ({status})")
    token = drv.find_element(By.CSS_SELECTOR, "#decide-form input[name=csrf]").get_attribute("value")
    status, body = post(f"/outputs/{TASK}/decide", {"decision": "approve", "reason": "forged", "csrf": token},
                        cookie["value"], origin="http://evil.example")
    check(status == 403 and "CSRF check" in body and "evil.example" in body,
          f"a POST from another origin is refused by the CSRF check ({status})")
    status, body = post(f"/outputs/{TASK}/decide", {"decision": "approve", "reason": "forged", "csrf": token},
                        cookie["value"], origin="null")
    check(status == 403 and "CSRF check" in body, f"a POST from an opaque origin (null, not same-origin) is refused ({status})")
    status, _ = post(f"/outputs/{TASK}/decide", {"decision": "approve", "reason": "forged", "csrf": token}, "0" * 64)
    check(status == 403, f"a POST without a session is refused ({status})")
    # A decision on a manifest other than the held one (the page was older than the outputs) is refused.
    status, body = post(f"/outputs/{TASK}/decide", {"decision": "approve", "reason": "stale", "csrf": token,
                                                     "manifest_sha256": "0" * 64}, cookie["value"])
    check(status == 409 and "review it again" in body, f"a decision on another manifest is refused ({status})")
    # Only files the manifest lists are served, and only images.
    for bad in ("../../journal.sqlite", "out/counts.csv", "/etc/passwd"):
        drv.get(BASE + f"/outputs/{TASK}/file?path=" + urllib.parse.quote(bad, safe=""))
        msg = wait.until(EC.presence_of_element_located((By.ID, "message"))).text
        check("No such task or file" in msg, f"the file endpoint refuses {bad!r}")
    # A rejection needs a reason.
    drv.get(BASE + "/outputs/" + TASK)
    wait.until(EC.presence_of_element_located((By.ID, "decide-form")))
    drv.find_element(By.ID, "reject").click()
    msg = wait.until(EC.presence_of_element_located((By.ID, "message"))).text
    check("a rejection needs a reason" in msg, f"a rejection without a reason is refused ({msg!r})")
    still_waiting("the forged POSTs, the stale manifest and the reasonless rejection")

    # 5. The table has a count of 7, below the node's 10, and this node blocks approval on findings: the review page
    #    lists the finding, an approval without an override is refused and the task waits.
    drv.get(BASE + "/outputs/" + TASK)
    wait.until(EC.presence_of_element_located((By.ID, "decide-form")))
    findings = text(By.ID, "findings")
    check("min_cell_count" in findings and "out/counts.csv" in findings and "count 7 is below" in findings,
          f"the review page lists the small count ({findings!r})")
    drv.find_element(By.ID, "reason").send_keys("aggregate counts only")
    drv.find_element(By.ID, "approve").click()
    msg = wait.until(EC.presence_of_element_located((By.ID, "message"))).text
    check("block_on_findings" in msg, f"an approval without an override of the findings is refused ({msg!r})")
    still_waiting("an approval without an override of the findings")

    # 6. The steward approves with a reason and an override; the task completes.
    drv.get(BASE + "/outputs/" + TASK)
    wait.until(EC.presence_of_element_located((By.ID, "decide-form")))
    drv.find_element(By.ID, "reason").send_keys("aggregate counts only")
    drv.find_element(By.ID, "override").send_keys("the 7 is a count of sites, not of people")
    drv.find_element(By.ID, "approve").click()
    decision = wait.until(EC.presence_of_element_located((By.ID, "decision"))).text
    check(f"approved by {STEWARD} (console) overriding 1 finding(s): aggregate counts only" in decision,
          f"the decision is recorded with its override ({decision!r})")
    deadline = time.time() + 60
    state = ""
    while time.time() < deadline:
        drv.get(BASE + "/tasks/" + TASK)
        state = wait.until(EC.presence_of_element_located((By.ID, "task-state"))).text
        if state in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.5)
    check(state == "completed", f"the approved task completes ({state})")
    print(json.dumps({"result": "passed"}), flush=True)
finally:
    drv.quit()
