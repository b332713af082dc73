// Package e2e is the end-to-end stage: dmarc-milter behind a real Postfix.
//
// The tests live behind the "e2e" build tag, so "go test ./..." compiles
// nothing here. They need root, Debian's postfix and python3-dkim packages
// and loopback networking; e2e/run installs what is missing and runs them:
//
//	bash e2e/run
//
// What the stage does: it starts an authoritative DNS server for
// testdata/zones on 127.0.0.1, an SMTP sink for failure reports, the freshly
// built dmarc-milter (--dns pointing at that server) and a private Postfix
// instance whose configuration, queue and log live in a temporary directory
// (nothing under /etc is read for configuration or written). Postfix's
// smtpd listens on 127.0.0.1:2525 and calls the milter over a unix socket in
// one pass and over TCP in another. Mail goes in over SMTP with XCLIENT, so
// that the client appears to come from the documentation addresses of the
// test zones, and the tests check the SMTP replies, Postfix's queue
// (postqueue -j), the delivered mailbox and the milter's log.
package e2e
