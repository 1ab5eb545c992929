package opsweb_test

import (
	"context"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/sendq/sendq/opsweb"
)

// chromiumPath is where Debian's chromium package installs the browser.
const chromiumPath = "/usr/bin/chromium"

// EnvSaveScreenshot set to 1 makes TestMonitoringUIInChromium copy its
// screenshot to testdata/monitoring.png.
const envSaveScreenshot = "SENDQ_SAVE_SCREENSHOT"

// TestMonitoringUIInChromium opens the web UI in headless Chromium, as an
// operator would, against a listener configured as if it were public.
func TestMonitoringUIInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the headless Chromium test")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s not found: install Debian's chromium package (apt-get install chromium)", chromiumPath)
	}
	t.Parallel()
	s := seedQueue(t)

	// Listens on loopback, configured as a public address: auth is on.
	h := setup(t, opsweb.Config{Addr: "0.0.0.0:8080", User: testUser, Password: testPassword})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stopServing := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.Serve(serveCtx, ln) }()
	t.Cleanup(func() {
		stopServing()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	base := "http://" + ln.Addr().String() + opsweb.MonitoringPath

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// The UI links Google Fonts: resolve no host name, so the browser
		// never leaves this machine.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	// The first Run starts the browser, and must not carry a timeout.
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start %s: %v", chromiumPath, err)
	}

	t.Run("WithoutCredentialsIs401", func(t *testing.T) {
		tab, cancel := chromedp.NewContext(browser)
		defer cancel()
		ctx, cancelT := context.WithTimeout(tab, 30*time.Second)
		defer cancelT()
		// Navigating to the UI makes Chromium ask for a password, which
		// headless it cannot: the load fails. Fetch it from an open page of
		// the same origin to see the answer itself.
		if err := chromedp.Do(ctx, chromedp.Navigate(base+"/")); err == nil || !strings.Contains(err.Error(), "ERR_INVALID_AUTH_CREDENTIALS") {
			t.Errorf("opening %s/ without credentials: err = %v, want the load refused for want of credentials", base, err)
		}
		if err := chromedp.Do(ctx, chromedp.Navigate(strings.TrimSuffix(base, opsweb.MonitoringPath)+"/healthz")); err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{"/", "/api/queues", "/queues/" + s.queue + "/tasks/" + s.archivedID} {
			got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`fetch("`+opsweb.MonitoringPath+path+`", {credentials: "omit"}).then(r => r.status + " " + r.headers.get("WWW-Authenticate"))`,
				chromedp.EvalAsValue, chromedp.EvalAwaitPromise))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(got, `401 Basic realm="sendq"`) {
				t.Errorf("fetch %s%s without credentials = %q, want 401 and a Basic challenge", opsweb.MonitoringPath, path, got)
			}
		}
	})

	tab, cancelTab := chromedp.NewContext(browser)
	defer cancelTab()
	ctx, cancel := context.WithTimeout(tab, 60*time.Second)
	defer cancel()
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(testUser+":"+testPassword))
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
			Headers: network.Headers{"Authorization": auth},
		})
		return err
	})); err != nil {
		t.Fatal(err)
	}
	// open loads url and waits until the page's text satisfies the
	// JavaScript expression cond (over the variable text); it returns the
	// page's text and HTML.
	open := func(t *testing.T, url, cond string) (text, html string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
			t.Fatalf("open %s: %v", url, err)
		}
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`(text => `+cond+`)(document.body.innerText)`)); err != nil {
			text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("%s: waiting for %s: %v; the page shows:\n%s", url, cond, err, text)
		}
		text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		if err != nil {
			t.Fatal(err)
		}
		html, err = chromedp.Run(ctx, chromedp.OuterHTML("html"))
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{"zebra-quokka", seedLocalPart, "other.person", "support@"} {
			if strings.Contains(html, secret) {
				t.Errorf("%s shows %q", url, secret)
			}
		}
		return text, html
	}
	q := strconv.Quote(s.queue)

	t.Run("QueuesPageListsTheQueueWithItsCounts", func(t *testing.T) {
		// The dashboard's table: queue, state, size, memory, latency,
		// processed, failed, error rate.
		open(t, base+"/", `text.includes(`+q+`) && document.querySelectorAll("tr").length > 1`)
		row, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...[...document.querySelectorAll("tr")]
			.find(r => r.cells.length > 6 && r.cells[0].innerText.trim() === `+q+`).cells].map(c => c.innerText.trim())`))
		if err != nil {
			t.Fatalf("no row for %s in the queues table: %v", s.queue, err)
		}
		// Size counts pending 2, scheduled 1, archived 1 and completed 1;
		// processed 2, failed 1.
		if len(row) < 7 || row[1] != "run" || row[2] != "5" || row[5] != "2" || row[6] != "1" {
			t.Fatalf("queues table row = %q, want state run, size 5, processed 2, failed 1", row)
		}
	})

	t.Run("QueuePageShowsTheArchivedTaskAndItsReason", func(t *testing.T) {
		text, _ := open(t, base+"/queues/"+s.queue+"?status=archived", `text.includes(`+strconv.Quote(seedReason)+`)`)
		for _, want := range []string{"Pending 2", "Scheduled 1", "Archived 1", "Completed 1",
			`"recipients": 2`, `"customer.example"`, `"example.net"`, subjectFail} {
			if !strings.Contains(text, want) {
				t.Errorf("the archived tasks page does not show %q:\n%s", want, text)
			}
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		saveScreenshot(t, png)
	})

	t.Run("TaskPageShowsTheReasonAndNoBody", func(t *testing.T) {
		text, _ := open(t, base+"/queues/"+s.queue+"/tasks/"+s.archivedID, `text.includes(`+strconv.Quote(seedReason)+`)`)
		for _, want := range []string{s.archivedID, "archived", subjectFail, `"attachments": 1`} {
			if !strings.Contains(text, want) {
				t.Errorf("the task page does not show %q:\n%s", want, text)
			}
		}
	})
}

// saveScreenshot writes png to the test's artifact directory (kept under the
// output directory with go test -artifacts) and, when SENDQ_SAVE_SCREENSHOT
// is 1, to testdata/monitoring.png.
func saveScreenshot(t *testing.T, png []byte) {
	t.Helper()
	path := filepath.Join(t.ArtifactDir(), "monitoring.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if os.Getenv(envSaveScreenshot) != "1" {
		return
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "monitoring.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot copied to testdata/monitoring.png")
}
