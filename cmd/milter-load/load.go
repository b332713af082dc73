package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/milter"
)

// Postfix's offer in option negotiation.
const (
	postfixProtocol = milter.PostfixProtocol
	postfixActions  = milter.PostfixActions
)

// go-milter's client downgrades to a milter that answers with protocol
// version 2 (as go-milter's own Server does) only if the masks it offered
// fit in those of version 2.
const (
	v2Actions  = postfixActions & 0x3f
	v2Protocol = postfixProtocol & 0x7f
)

// config is one load run.
type config struct {
	targets     []target // milters, called in order for every event as Postfix does
	sessions    int
	duration    time.Duration
	count       int64
	perConn     int
	clientIPs   []string
	helo        string
	rcpt        string
	v2          bool
	timeout     time.Duration
	corpus      []*message
	idle        int // hold this many idle connections instead of sending mail
	onIdleReady func()
	interrupt   <-chan os.Signal // ends a run early, as the duration does
}

type target struct{ network, address string }

// parseTarget reads Postfix's milter address syntax: unix:/path,
// inet:host:port or inet:port@host (also a bare /path).
func parseTarget(s string) (target, error) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		return target{"unix", strings.TrimPrefix(s, "unix:")}, nil
	case strings.HasPrefix(s, "local:"):
		return target{"unix", strings.TrimPrefix(s, "local:")}, nil
	case strings.HasPrefix(s, "/"):
		return target{"unix", s}, nil
	case strings.HasPrefix(s, "inet:"):
		a := strings.TrimPrefix(s, "inet:")
		if port, host, ok := strings.Cut(a, "@"); ok {
			a = net.JoinHostPort(host, port)
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return target{}, fmt.Errorf("bad milter address %q: %w", s, err)
		}
		return target{"tcp", a}, nil
	}
	return target{}, fmt.Errorf("bad milter address %q (want unix:/path or inet:host:port)", s)
}

func (t target) String() string {
	if t.network == "unix" {
		return "unix:" + t.address
	}
	return "inet:" + t.address
}

// outcome of one message.
type outcome int

const (
	accepted outcome = iota
	rejected
	tempfailed
	quarantined
	discarded
	failed // protocol or connection error
)

// stats are collected per worker and merged.
type stats struct {
	counts    [failed + 1]int64
	latencies []time.Duration
	firstErr  error
}

func (s *stats) merge(o *stats) {
	for i := range s.counts {
		s.counts[i] += o.counts[i]
	}
	s.latencies = append(s.latencies, o.latencies...)
	if s.firstErr == nil {
		s.firstErr = o.firstErr
	}
}

// conn is one SMTP connection as the milters see it: a session with each.
type conn struct {
	cfg      *config
	sessions []*gomilter.ClientSession
}

func (c *config) dial(ip string) (*conn, error) {
	actions, protocol := postfixActions, postfixProtocol
	if c.v2 {
		actions, protocol = v2Actions, v2Protocol
	}
	cn := &conn{cfg: c}
	for _, t := range c.targets {
		cl := gomilter.NewClientWithOptions(t.network, t.address, gomilter.ClientOptions{
			Dialer:       &net.Dialer{Timeout: c.timeout},
			ReadTimeout:  c.timeout,
			WriteTimeout: c.timeout,
			ActionMask:   actions,
			ProtocolMask: protocol,
		})
		s, err := cl.Session()
		if err != nil {
			cn.close()
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		cn.sessions = append(cn.sessions, s)
	}
	fam := gomilter.FamilyInet
	if strings.Contains(ip, ":") {
		fam = gomilter.FamilyInet6
	}
	for _, s := range cn.sessions {
		// Postfix's default milter_connect_macros: j {daemon_name}
		// {daemon_addr} v _ (sent only for events the milter wants).
		if s.ProtocolOpts&gomilter.OptNoConnect == 0 {
			if err := s.Macros(gomilter.CodeConn, "j", "mx.load.example", "{daemon_name}", "smtpd",
				"{daemon_addr}", "127.0.0.1", "v", "Postfix 3.7", "_", "client.load.example ["+ip+"]"); err != nil {
				cn.close()
				return nil, err
			}
		}
		if act, err := s.Conn("client.load.example", fam, 40000, ip); err != nil || act.Code != gomilter.ActContinue {
			cn.close()
			return nil, stageError("connect", act, err)
		}
		if act, err := s.Helo(c.helo); err != nil || act.Code != gomilter.ActContinue {
			cn.close()
			return nil, stageError("helo", act, err)
		}
	}
	return cn, nil
}

func stageError(stage string, act *gomilter.Action, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", stage, err)
	}
	return fmt.Errorf("%s: milter answered %q, not continue", stage, rune(act.Code))
}

func (cn *conn) close() {
	for _, s := range cn.sessions {
		s.Close()
	}
}

func newQueueID() string {
	var b [5]byte
	rand.Read(b[:])
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

// classify turns a milter's answer into an outcome; done reports whether
// the message ends here.
func classify(act *gomilter.Action) (o outcome, done bool) {
	switch act.Code {
	case gomilter.ActContinue, gomilter.ActSkip:
		return accepted, false
	case gomilter.ActAccept:
		return accepted, true
	case gomilter.ActReject:
		return rejected, true
	case gomilter.ActTempFail:
		return tempfailed, true
	case gomilter.ActDiscard:
		return discarded, true
	case gomilter.ActReplyCode:
		if act.SMTPCode >= 500 {
			return rejected, true
		}
		if act.SMTPCode >= 400 {
			return tempfailed, true
		}
		return accepted, true
	}
	return failed, true
}

// send runs one message through every milter of the connection, event by
// event in the order Postfix uses, and returns the outcome. An error means
// the connection is unusable.
func (cn *conn) send(m *message) (outcome, error) {
	qid := newQueueID()
	// live are the milters still taking part in this message; one that
	// accepts the message early sees no more of it.
	live := slices.Clone(cn.sessions)
	result := accepted
	finish := func(o outcome) (outcome, error) {
		// Postfix aborts the transaction at the milters that did not
		// decide.
		for _, s := range live {
			if err := s.Abort(); err != nil {
				return failed, err
			}
		}
		return o, nil
	}
	// step sends one event to every live milter and stops at the first
	// decision.
	step := func(stage string, f func(*gomilter.ClientSession) (*gomilter.Action, error)) (outcome, bool, error) {
		for i := 0; i < len(live); i++ {
			act, err := f(live[i])
			if err != nil {
				return failed, true, fmt.Errorf("%s: %w", stage, err)
			}
			o, done := classify(act)
			if o == failed {
				return failed, true, fmt.Errorf("%s: unexpected action %q", stage, rune(act.Code))
			}
			if act.Code == gomilter.ActAccept {
				live = slices.Delete(live, i, i+1)
				i--
				continue
			}
			if done {
				live = slices.Delete(live, i, i+1)
				return o, true, nil
			}
		}
		return accepted, len(live) == 0, nil
	}

	steps := []struct {
		stage string
		f     func(*gomilter.ClientSession) (*gomilter.Action, error)
	}{
		{"mail", func(s *gomilter.ClientSession) (*gomilter.Action, error) {
			if s.ProtocolOpts&gomilter.OptNoMailFrom == 0 {
				if err := s.Macros(gomilter.CodeMail, "{mail_addr}", m.mailFrom, "{mail_mailer}", "smtp"); err != nil {
					return nil, err
				}
			}
			return s.Mail(m.mailFrom, nil)
		}},
		{"rcpt", func(s *gomilter.ClientSession) (*gomilter.Action, error) {
			if s.ProtocolOpts&gomilter.OptNoRcptTo == 0 {
				if err := s.Macros(gomilter.CodeRcpt, "i", qid, "{rcpt_addr}", cn.cfg.rcpt, "{rcpt_mailer}", "smtp"); err != nil {
					return nil, err
				}
			}
			return s.Rcpt(cn.cfg.rcpt, nil)
		}},
		{"header", func(s *gomilter.ClientSession) (*gomilter.Action, error) {
			lead := s.ProtocolOption(gomilter.OptHeaderLeadingSpace)
			for _, f := range m.fields {
				v := f[1]
				if !lead {
					v = strings.TrimPrefix(v, " ")
				}
				act, err := s.HeaderField(f[0], v)
				if err != nil || act.Code != gomilter.ActContinue {
					return act, err
				}
			}
			return &gomilter.Action{Code: gomilter.ActContinue}, nil
		}},
		{"eoh", func(s *gomilter.ClientSession) (*gomilter.Action, error) {
			if s.ProtocolOpts&gomilter.OptNoEOH == 0 {
				if err := s.Macros(gomilter.CodeEOH, "i", qid); err != nil {
					return nil, err
				}
			}
			return s.HeaderEnd()
		}},
		{"body", func(s *gomilter.ClientSession) (*gomilter.Action, error) {
			// Postfix sends the body in chunks of at most 64 KiB.
			for b := m.body; len(b) > 0; {
				n := min(len(b), gomilter.MaxBodyChunk)
				act, err := s.BodyChunk(b[:n])
				if err != nil || act.Code != gomilter.ActContinue {
					if err == nil && act.Code == gomilter.ActSkip {
						act.Code = gomilter.ActContinue
					}
					return act, err
				}
				b = b[n:]
			}
			return &gomilter.Action{Code: gomilter.ActContinue}, nil
		}},
	}
	for _, st := range steps {
		o, done, err := step(st.stage, st.f)
		if err != nil {
			return failed, err
		}
		if done {
			return finish(o)
		}
	}
	// End of message, milter by milter; a decision ends the message.
	for len(live) > 0 {
		s := live[0]
		live = live[1:]
		if err := s.Macros(gomilter.CodeEOB, "i", qid); err != nil {
			return failed, fmt.Errorf("eom: %w", err)
		}
		mods, act, err := s.End()
		if err != nil {
			return failed, fmt.Errorf("eom: %w", err)
		}
		o, done := classify(act)
		if o == failed {
			return failed, fmt.Errorf("eom: unexpected action %q", rune(act.Code))
		}
		if o == accepted {
			for _, mod := range mods {
				if mod.Code == gomilter.ActQuarantine {
					result = quarantined
				}
			}
		}
		if done && act.Code != gomilter.ActAccept {
			return finish(o)
		}
	}
	return result, nil
}

// run sends the corpus with cfg.sessions concurrent connections until
// cfg.count messages were sent or cfg.duration passed. Every worker opens
// its first connection before the clock starts.
func run(cfg *config) (*stats, time.Duration, error) {
	if len(cfg.corpus) == 0 {
		return nil, 0, errors.New("empty corpus")
	}
	var (
		next    atomic.Int64 // messages handed out
		ipNext  atomic.Int64
		wg      sync.WaitGroup
		ready   sync.WaitGroup
		start   = make(chan struct{})
		results = make([]*stats, cfg.sessions)
		stop    atomic.Bool
	)
	pickIP := func() string {
		return cfg.clientIPs[int(ipNext.Add(1)-1)%len(cfg.clientIPs)]
	}
	take := func() (*message, bool) {
		if stop.Load() {
			return nil, false
		}
		n := next.Add(1)
		if cfg.count > 0 && n > cfg.count {
			return nil, false
		}
		return cfg.corpus[int(n-1)%len(cfg.corpus)], true
	}
	for w := range cfg.sessions {
		wg.Add(1)
		ready.Add(1)
		st := &stats{}
		results[w] = st
		go func() {
			defer wg.Done()
			// The first connection is opened before the clock starts;
			// later ones when a message needs one.
			cn, err := cfg.dial(pickIP())
			ready.Done()
			<-start
			sent := 0 // on cn
			fail := func(err error) {
				st.counts[failed]++
				if st.firstErr == nil {
					st.firstErr = err
				}
			}
			if err != nil {
				// Not counted: the first message retries the dial and
				// counts as an error if it fails again.
				cn = nil
			}
			defer func() {
				if cn != nil {
					cn.close()
				}
			}()
			for {
				m, ok := take()
				if !ok {
					return
				}
				if cn == nil {
					if cn, err = cfg.dial(pickIP()); err != nil {
						// The message is lost with the connection. A
						// milter that is down would make this loop spin;
						// pace the reconnects.
						fail(err)
						cn = nil
						time.Sleep(10 * time.Millisecond)
						continue
					}
					sent = 0
				}
				t0 := time.Now()
				o, err := cn.send(m)
				if err != nil {
					fail(fmt.Errorf("message %s: %w", m.name, err))
					cn.close()
					cn = nil
					continue
				}
				st.latencies = append(st.latencies, time.Since(t0))
				st.counts[o]++
				if sent++; cfg.perConn > 0 && sent >= cfg.perConn {
					cn.close()
					cn = nil
				}
			}
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	if cfg.duration > 0 {
		timer := time.AfterFunc(cfg.duration, func() { stop.Store(true) })
		defer timer.Stop()
	}
	finished := make(chan struct{})
	go func() {
		select {
		case <-cfg.interrupt:
			stop.Store(true)
		case <-finished:
		}
	}()
	wg.Wait()
	close(finished)
	elapsed := time.Since(t0)
	total := &stats{}
	for _, st := range results {
		total.merge(st)
	}
	slices.Sort(total.latencies)
	return total, elapsed, nil
}

// holdIdle opens cfg.idle connections (negotiated, connected, HELO sent),
// calls cfg.onIdleReady and keeps them until done is closed.
func holdIdle(cfg *config, done <-chan struct{}) (int, error) {
	var conns []*conn
	defer func() {
		for _, c := range conns {
			c.close()
		}
	}()
	for i := range cfg.idle {
		c, err := cfg.dial(cfg.clientIPs[i%len(cfg.clientIPs)])
		if err != nil {
			return len(conns), fmt.Errorf("idle connection %d: %w", i+1, err)
		}
		conns = append(conns, c)
	}
	if cfg.onIdleReady != nil {
		cfg.onIdleReady()
	}
	<-done
	return len(conns), nil
}

// percentile of sorted latencies (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
