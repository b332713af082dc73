package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/dmarc-milter/dmarc-milter/internal/miltertest"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
)

// eval runs the daemon's pipeline: a set of messages sent through the
// milter protocol to the running daemon and given to "eval --json" with
// the same configuration get the same action and reply, the same
// Authentication-Results, the same failure-report decision and the same
// aggregate report row. The set covers the header bounds, forged
// Authentication-Results (the session's own reject), a bad From,
// quarantine, DKIM and SPF passes and a spoof.
func TestEvalMatchesDaemon(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "m.sock")
	conf := writeFile(t, fmt.Sprintf(`dns = [%q]
authserv_id = "mx.cli.example"
state_dir = %q
report_from = "dmarc-reports@mx.cli.example"
report_smtp = "127.0.0.1:1"
max_header_fields = 20
`, dnsSrv.Addr, state))
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--log-format", "json")
	d.waitFor("dmarc-milter ready")

	plain := func(from, subject string, extra ...string) string {
		h := append([]string{"From: " + from, "To: rcpt@cli.example", "Subject: " + subject,
			"Date: Mon, 30 Nov 2026 10:00:00 +0000", "Message-ID: <" + subject + "@test.example>"}, extra...)
		return strings.Join(h, "\r\n") + "\r\n\r\nHello,\r\nthis is a test.\r\n"
	}
	signed := func(raw string) string {
		return testutil.Sign(t, raw, "pass.example", "sel1", filepath.Join("..", "..", "testdata", "keys", "rsa2048.pem"), msgdkim.CanonicalizationRelaxed)
	}
	repeat := func(field string, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf(field, i))
		}
		return out
	}
	cases := []struct {
		name, ip, mailFrom, raw string
		action                  string // what both must say
	}{
		{name: "spf-pass", ip: "192.0.2.10", mailFrom: "bob@pass.example", raw: plain("Bob <bob@pass.example>", "spf-pass"), action: "accept"},
		{name: "spoof", ip: "203.0.113.66", mailFrom: "ceo@pass.example", raw: plain("CEO <ceo@pass.example>", "spoof"), action: "reject"},
		{name: "dkim-pass", ip: "198.51.100.7", mailFrom: "list@lists.example", raw: signed(plain("Bob <bob@pass.example>", "dkim-pass")), action: "accept"},
		{name: "forged-ar-removed", ip: "192.0.2.10", mailFrom: "bob@pass.example",
			raw: plain("bob@pass.example", "forged-ar-removed", "Authentication-Results: mx.cli.example; dmarc=pass header.from=pass.example"), action: "accept"},
		{name: "forged-ar-too-many", ip: "192.0.2.10", mailFrom: "bob@pass.example",
			raw: plain("bob@pass.example", "forged-ar-too-many", repeat("Authentication-Results: mx.cli.example; dmarc=pass (%d)", 21)...), action: "reject"},
		{name: "header-over-bounds", ip: "203.0.113.8", mailFrom: "list@lists.example",
			raw: signed(plain("bob@pass.example", "header-over-bounds", repeat("X-Filler-%d: x", 30)...)), action: "reject"},
		{name: "two-from", ip: "192.0.2.10", mailFrom: "bob@pass.example", raw: plain("bob@pass.example", "two-from", "From: eve@pass.example"), action: "reject"},
		{name: "quarantine", ip: "203.0.113.67", mailFrom: "x@quarantine.example", raw: plain("x@quarantine.example", "quarantine"), action: "quarantine"},
		{name: "fail-reported", ip: "203.0.113.68", mailFrom: "x@elsewhere.example", raw: plain("x@pass.example", "fail-reported"), action: "reject"},
	}

	type seen struct {
		action, reply, ar string
	}
	daemon := map[string]seen{}
	evals := map[string]*evaluation{}
	for i, c := range cases {
		qid := fmt.Sprintf("Q%02d", i)
		s := miltertest.Dial(t, "unix", sock, 0, nil)
		miltertest.Connect(t, s, c.ip, "client.example")
		o := miltertest.Send(t, s, miltertest.Msg{MailFrom: c.mailFrom, QueueID: qid, Raw: c.raw})
		// With the leading-space option the milter writes the value with
		// its space after the colon.
		got := seen{action: "accept", ar: strings.TrimPrefix(o.AuthResults(), " ")}
		switch code := o.Code(); {
		case code == 550:
			got.action = "reject"
		case code == 451:
			got.action = "tempfail"
		case o.Quarantined():
			got.action = "quarantine"
		}
		if o.Code() != 250 {
			got.reply = fmt.Sprintf("%d %s", o.Act.SMTPCode, strings.TrimSpace(o.Act.SMTPText))
		}
		daemon[qid] = got

		// The exit status says the action; the JSON says more.
		out, errOut, _ := runBin(bin, "eval", "--config", conf, "--json", "--ip", c.ip, "--helo", "client.example", "--mail-from", c.mailFrom, writeFile(t, c.raw))
		var ev evaluation
		if err := json.Unmarshal([]byte(out), &ev); err != nil {
			t.Fatalf("%s: eval --json: %v\n%s%s", c.name, err, out, errOut)
		}
		evals[qid] = &ev

		if ev.Action != c.action || got.action != c.action {
			t.Errorf("%s: daemon %s, eval %s, want %s", c.name, got.action, ev.Action, c.action)
		}
		if ev.Reply != got.reply {
			t.Errorf("%s: daemon replied %q, eval %q", c.name, got.reply, ev.Reply)
		}
		if got.action != "reject" && ev.AuthenticationResults != got.ar {
			t.Errorf("%s: Authentication-Results differ:\ndaemon %q\neval   %q", c.name, got.ar, ev.AuthenticationResults)
		}
	}
	if ev := evals["Q04"]; ev.Rule != "forged-ar" {
		t.Errorf("forged-ar-too-many: rule %q, want forged-ar", ev.Rule)
	}
	line := d.waitFor(`"queue_id":"Q04"`)
	if !strings.Contains(line, `"action":"reject"`) || !strings.Contains(line, `"rule":"forged-ar"`) {
		t.Errorf("the verdict line does not say the reject that was sent: %s", line)
	}

	// Failure reports: spooled for the messages eval says are wanted,
	// none for the others.
	out, errOut, code := runBin(bin, "spool", "list", "--json", "--config", conf)
	var spooled []outbox.Entry
	if err := json.Unmarshal([]byte(out), &spooled); err != nil || code != 0 {
		t.Fatalf("spool list --json: exit %d %v\n%s%s", code, err, out, errOut)
	}
	reported := map[string]bool{}
	for _, e := range spooled {
		reported[e.QueueID] = true
	}
	wanted := 0
	for qid, ev := range evals {
		if (ev.FailureReport == "wanted") != reported[qid] {
			t.Errorf("%s: eval says failure report %q, daemon spooled one: %v", qid, ev.FailureReport, reported[qid])
		}
		if ev.FailureReport == "wanted" {
			wanted++
		}
	}
	if wanted == 0 {
		t.Error("no message of the set wanted a failure report")
	}

	// Aggregate rows: the daemon's, in the store after SIGTERM, are
	// eval's, one per message (each has its own client address or
	// outcome).
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	var fromDaemon, fromEval []string
	for _, r := range storedRows(t, "", state, "") {
		for range r.Count {
			fromDaemon = append(fromDaemon, r.Key.Domain+" "+r.Data)
		}
	}
	for _, ev := range evals {
		if ev.Aggregate != nil {
			data, _ := json.Marshal(ev.Aggregate.Row)
			fromEval = append(fromEval, ev.Aggregate.Domain+" "+string(data))
		}
	}
	sort.Strings(fromDaemon)
	sort.Strings(fromEval)
	if strings.Join(fromDaemon, "\n") != strings.Join(fromEval, "\n") || len(fromEval) < 5 {
		t.Errorf("aggregate rows differ:\ndaemon:\n%s\neval:\n%s", strings.Join(fromDaemon, "\n"), strings.Join(fromEval, "\n"))
	}

	// The networks the daemon saw pass DMARC are in its store after
	// SIGTERM, and eval weighs them as the daemon does: a failure from the
	// network of the dkim-pass message is quarantined, not rejected.
	spoof := plain("CEO <ceo@pass.example>", "known-network")
	out, errOut, _ = runBin(bin, "eval", "--config", conf, "--json", "--ip", "198.51.100.99", "--helo", "client.example", "--mail-from", "ceo@pass.example", writeFile(t, spoof))
	var ev evaluation
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		t.Fatalf("eval --json: %v\n%s%s", err, out, errOut)
	}
	if ev.Action != "quarantine" || len(ev.Overrides) == 0 || ev.Overrides[0].Type != "local_policy" {
		t.Errorf("a failure from a network that passed before: action %s, overrides %+v; want quarantine, local_policy", ev.Action, ev.Overrides)
	}
}
