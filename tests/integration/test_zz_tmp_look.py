import subprocess, tempfile, requests
from tests.integration.test_status_page_browser import rendered_dom, chromium, FLAGS
from serve_app.examples import digits_sample

def test_look(fleet):
    url = fleet["url"]
    for _ in range(20):
        requests.post(f"{url}/v1/models/digits:predict", json={"instances": digits_sample(2)}, timeout=60)
    requests.post(f"{url}/v1/models/digits:predict", json={"x": 1}, timeout=60)
    requests.get(f"{url}/fleet", timeout=60)
    import time; time.sleep(3)
    open("/tmp/fleet.json", "w").write(requests.get(f"{url}/fleet", timeout=60).text)
    open("/tmp/dom.html", "w").write(rendered_dom(url + "/"))
    with tempfile.TemporaryDirectory() as p:
        subprocess.run([chromium(), *FLAGS, f"--user-data-dir={p}", "--window-size=1200,2400", "--screenshot=/tmp/page.png", url + "/"], capture_output=True, timeout=120)
