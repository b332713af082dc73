package dkim

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dmarc-milter/dmarc-milter/internal/conformance"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// arcExceptions are the validation cases of the open ARC test suite whose
// expectation RFC 8617 overrides, with the reason. The suite predates the
// RFC: for a chain whose seal says cv=fail its reference (dkimpy) gives no
// status at all ("the chain is terminated"), the suite's empty cv. RFC
// 8617 section 5.2 step 2 makes the newest cv=fail a fail, and step 3
// makes any cv other than none at instance 1 (or pass above it) a fail.
var arcExceptions = map[string]ARCStatus{
	"cv_fail_i1_as_cv_fail": ARCFail, // the only seal says cv=fail: step 2
	"cv_fail_i2_as2_fail":   ARCFail, // the newest seal says cv=fail: step 2
	"cv_fail_i2_as1_fail":   ARCFail, // cv=fail at instance 1: step 3
	// An AMS without c=: RFC 8617 section 4.1.2 gives the AMS the syntax
	// and semantics of a DKIM-Signature, whose c= defaults to
	// simple/simple (RFC 6376 section 3.5); dkimpy assumes
	// relaxed/relaxed, and the case was signed that way.
	"ams_fields_c_na": ARCFail,
}

// arcCase is one validation case of the suite.
type arcCase struct {
	name, description string
	message           string
	cv                string
	txt               map[string]string
}

// TestARCSuite runs every validation case of the open ARC test suite
// (ValiMail/arc_test_suite, arc-draft-validation-tests.yml) through the
// verifier as the milter feeds it, with and without the leading space of
// header values.
func TestARCSuite(t *testing.T) {
	dir := conformance.Dir(t, "arc")
	cases := loadARCSuite(t, filepath.Join(dir, "arc-draft-validation-tests.yml"))
	if len(cases) < 170 {
		t.Fatalf("%d validation cases, want the suite's 175", len(cases))
	}
	passed := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := ARCStatus(strings.ToLower(tc.cv))
			if ex, ok := arcExceptions[strings.SplitN(tc.name, "#", 2)[0]]; ok {
				want = ex
			}
			z := &dnstest.Resolver{TXT: map[string][]string{}}
			for name, txt := range tc.txt {
				z.TXT[strings.ToLower(strings.TrimSuffix(name, "."))] = []string{txt}
			}
			raw := strings.ReplaceAll(tc.message, "\n", "\r\n")
			for _, leadingSpace := range []bool{true, false} {
				fields, body := splitMessage([]byte(raw), leadingSpace)
				v := NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: leadingSpace, ARC: true,
					Now: func() time.Time { return time.Unix(1500000000, 0) }})
				feed(t, v, fields, body, []int{7, 4096})
				got := v.ARC()
				if got.Status != want {
					t.Errorf("%s (leading space %v): cv=%s (%v), want %s", tc.description, leadingSpace, got.Status, got.Err, want)
				}
			}
			if !t.Failed() {
				passed++
			}
		})
	}
	t.Logf("%d of %d ARC validation cases as expected (%d by a listed exception)", passed, len(cases), len(arcExceptions))
}

// loadARCSuite reads the scenarios of the suite. Its YAML repeats some
// test names within a scenario; every occurrence is a case of its own
// (named name#2, ...), so the mapping is read node by node.
func loadARCSuite(t *testing.T, path string) []arcCase {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var cases []arcCase
	seen := map[string]int{}
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		scenario := doc.Content[0]
		txt := map[string]string{}
		var tests *yaml.Node
		for i := 0; i+1 < len(scenario.Content); i += 2 {
			switch scenario.Content[i].Value {
			case "txt-records":
				if err := scenario.Content[i+1].Decode(&txt); err != nil {
					t.Fatal(err)
				}
			case "tests":
				tests = scenario.Content[i+1]
			}
		}
		for i := 0; tests != nil && i+1 < len(tests.Content); i += 2 {
			var c struct {
				Description string `yaml:"description"`
				Message     string `yaml:"message"`
				CV          string `yaml:"cv"`
			}
			if err := tests.Content[i+1].Decode(&c); err != nil {
				t.Fatal(err)
			}
			name := tests.Content[i].Value
			if seen[name]++; seen[name] > 1 {
				name += "#" + string(rune('0'+seen[name]))
			}
			cases = append(cases, arcCase{name: name, description: c.Description, message: c.Message, cv: strings.TrimSpace(c.CV), txt: txt})
		}
	}
	return cases
}
