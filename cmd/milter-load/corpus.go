package main

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// message is one corpus entry, split the way an MTA hands it to a milter.
type message struct {
	name     string      // file name or generated label
	mailFrom string      // envelope sender: the From address
	fields   [][2]string // header fields; values with their leading space, folded with LF
	body     []byte      // CRLF line endings
	size     int         // bytes of the whole message
}

// parseMessage splits a message (CRLF or LF line endings) into header
// fields and body as Postfix's cleanup does before it calls a milter: the
// value keeps its leading white space (SMFIP_HDR_LEADSPC strips nothing;
// without it the first space is dropped when sending), continuation lines
// are joined with a bare LF, and the body is sent with CRLF.
func parseMessage(name string, raw []byte) (*message, error) {
	fields, body, err := rfc5322.Split(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m := &message{name: name, body: body, size: len(raw)}
	for _, f := range fields {
		m.fields = append(m.fields, [2]string{f.Name, f.Value})
	}
	for _, f := range m.fields {
		if !strings.EqualFold(f[0], "From") {
			continue
		}
		a, err := mail.ParseAddress(strings.ReplaceAll(f[1], "\n", ""))
		if err != nil {
			return nil, fmt.Errorf("%s: From: %w", name, err)
		}
		m.mailFrom = a.Address
		break
	}
	if m.mailFrom == "" {
		return nil, fmt.Errorf("%s: no From address to use as MAIL FROM", name)
	}
	return m, nil
}

// loadCorpus reads every *.eml file of dir, in name order.
func loadCorpus(dir string) ([]*message, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("corpus %s: no .eml files", dir)
	}
	sort.Strings(files)
	var msgs []*message
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		m, err := parseMessage(filepath.Base(f), raw)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// genOptions describe a generated corpus.
type genOptions struct {
	count    int      // distinct messages
	sizes    []int    // approximate message sizes, used in turn
	domains  []string // sender domains, used in turn
	signed   float64  // fraction of messages carrying a DKIM signature
	signer   crypto.Signer
	selector string
	sdid     string // d= of signatures; "" means the From domain
}

const filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"

// generate builds the corpus: message i has size sizes[i%len] and sender
// domains[i%len]; signatures are spread evenly over the corpus.
func generate(o genOptions) ([]*message, error) {
	if o.count <= 0 || len(o.sizes) == 0 || len(o.domains) == 0 {
		return nil, errors.New("generated corpus: need a count, sizes and domains")
	}
	if o.signed > 0 && o.signer == nil {
		return nil, errors.New("generated corpus: signed messages need --dkim-key")
	}
	var msgs []*message
	signedSoFar := 0
	for i := range o.count {
		domain := o.domains[i%len(o.domains)]
		from := fmt.Sprintf("user%d@%s", i%97, domain)
		var h bytes.Buffer
		fmt.Fprintf(&h, "From: Sender %d <%s>\r\n", i, from)
		fmt.Fprintf(&h, "To: rcpt@load.example\r\n")
		fmt.Fprintf(&h, "Subject: milter-load message %d\r\n", i)
		fmt.Fprintf(&h, "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n")
		fmt.Fprintf(&h, "Message-ID: <load.%d@%s>\r\n", i, domain)
		fmt.Fprintf(&h, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
		size := o.sizes[i%len(o.sizes)]
		var b bytes.Buffer
		for b.Len()+h.Len() < size {
			b.WriteString(filler)
		}
		raw := append(h.Bytes(), b.Bytes()...)
		// Spread signatures: message i is signed when the running share
		// of signed messages falls below the wanted fraction.
		if float64(signedSoFar) < o.signed*float64(i+1)-1e-9 {
			sdid := o.sdid
			if sdid == "" {
				sdid = domain
			}
			var out bytes.Buffer
			err := msgdkim.Sign(&out, bytes.NewReader(raw), &msgdkim.SignOptions{
				Domain:                 sdid,
				Selector:               o.selector,
				Signer:                 o.signer,
				HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
				BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
				HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
			})
			if err != nil {
				return nil, fmt.Errorf("generated corpus: sign: %w", err)
			}
			raw = out.Bytes()
			signedSoFar++
		}
		m, err := parseMessage(fmt.Sprintf("gen-%d", i), raw)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// loadKey reads a PEM private key (PKCS#8, PKCS#1 RSA) for signing.
func loadKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: key of type %T cannot sign", path, k)
		}
		return s, nil
	}
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: neither PKCS#8 nor PKCS#1: %w", path, err)
	}
	return k, nil
}

// parseSize reads "4096", "4k", "4KiB", "64K", "1m", "50MB" (powers of 1024).
func parseSize(s string) (int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "b"), "i")
	mult := 1
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, strings.TrimSuffix(t, "k")
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, strings.TrimSuffix(t, "m")
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// writeCorpus writes msgs into dir as NAME.eml with LF line endings: the
// format smtp-source -F expects (it appends CRLF to every line), and one
// loadCorpus reads back unchanged.
func writeCorpus(dir string, msgs []*message) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, m := range msgs {
		var b bytes.Buffer
		for _, f := range m.fields {
			b.WriteString(f[0] + ":" + f[1] + "\n") // continuation lines are already joined with LF
		}
		b.WriteString("\n")
		b.Write(bytes.ReplaceAll(m.body, []byte("\r\n"), []byte("\n")))
		name := strings.TrimSuffix(m.name, ".eml") + ".eml"
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write corpus: %w", err)
		}
	}
	return nil
}
