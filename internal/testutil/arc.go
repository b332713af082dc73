package testutil

import (
	"bytes"
	"os/exec"
	"strings"
)

// sealScript seals a message read from standard input with one ARC set
// (RFC 8617) using dkimpy, an implementation independent of ours: the
// ARC-Authentication-Results are made from the message's
// Authentication-Results fields of the sealer's authserv-id.
const sealScript = `import sys, dkim
msg = sys.stdin.buffer.read()
key = open(sys.argv[4], 'rb').read()
hdrs = dkim.arc_sign(msg, sys.argv[2].encode(), sys.argv[1].encode(), key, sys.argv[3].encode(),
    include_headers=[b'from', b'to', b'subject', b'date', b'message-id'])
sys.stdout.buffer.write(b''.join(hdrs) + msg)
`

// SkipTB is a TB that can skip.
type SkipTB interface {
	TB
	Skipf(format string, args ...any)
}

// ARCSeal adds an ARC set to raw (CRLF line ends), sealed for domain with
// selector and the PEM key at keyPath, as the host authservID. It needs
// Debian's python3-dkim and python3-authres (.ci/run installs them); the
// test is skipped, saying so, without them.
func ARCSeal(t SkipTB, raw, domain, selector, keyPath, authservID string) string {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import dkim, authres").Run(); err != nil {
		t.Skipf("ARC sealing needs /usr/bin/python3 with python3-dkim and python3-authres: %v", err)
	}
	cmd := exec.Command("/usr/bin/python3", "-c", sealScript, domain, selector, authservID, keyPath)
	cmd.Stdin = strings.NewReader(raw)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("dkimpy arc_sign: %v\n%s", err, errOut.String())
	}
	return out.String()
}
