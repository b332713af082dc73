package report

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// maxIdle is the longest the sender sleeps without looking at the spool.
const maxIdle = time.Minute

func (r *Reporter) envelopeFrom() string {
	from := r.conf().From
	a, err := mail.ParseAddress(from)
	if err != nil {
		return from
	}
	return a.Address
}

// sendLoop delivers due reports until ctx ends.
func (r *Reporter) sendLoop(ctx context.Context) {
	for {
		for _, e := range r.due() {
			if ctx.Err() != nil {
				return
			}
			r.attempt(ctx, e)
		}
		wait := maxIdle
		if next, ok := r.nextDue(); ok {
			wait = min(max(next.Sub(r.now()), 0), maxIdle)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.wake:
		case <-t.C:
			if r.spoolOn() {
				r.scanSpool(false)
			}
		}
		t.Stop()
	}
}

// due returns the reports whose next attempt has come, oldest first.
func (r *Reporter) due() []*entry {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*entry
	for _, e := range r.pending {
		if !e.env.NextAttempt.After(now) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].env.Created.Before(out[j].env.Created) })
	return out
}

func (r *Reporter) nextDue() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Time
	for _, e := range r.pending {
		if next.IsZero() || e.env.NextAttempt.Before(next) {
			next = e.env.NextAttempt
		}
	}
	return next, !next.IsZero()
}

func (r *Reporter) forget(e *entry) {
	r.mu.Lock()
	delete(r.pending, e.env.ID)
	r.mu.Unlock()
}

// backoff is the wait after the n-th failed attempt: MinBackoff doubling up
// to MaxBackoff.
func (c *Config) backoff(n int) time.Duration {
	d := c.MinBackoff
	for i := 1; i < n && d < c.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, c.MaxBackoff)
}

// attempt tries to deliver one report and updates the spool. A delivery
// cut short because ctx ended (shutdown) leaves the report spooled as it
// was, for the next start.
func (r *Reporter) attempt(ctx context.Context, e *entry) {
	// One configuration for the whole attempt, even if a reload comes
	// in the middle of it.
	cfg := r.conf()
	env, msg, err := readSpoolFile(e.path)
	if err != nil {
		r.log.Error().Err(err).Str("path", e.path).Msg("spooled failure report vanished or is unreadable; dropped")
		r.forget(e)
		r.count(func(s *Stats) { s.Dropped++ })
		r.removeSpoolFile(e.path)
		return
	}
	log := r.log.With().Str("id", env.ID).Str("to", env.To).Str("domain", env.Domain).Str("queue_id", env.QueueID).
		Str("kind", env.noun()).Logger()
	if env.Kind == kindAggregate && env.Period != 0 && !r.stillOwner(ctx, env) {
		// Another host took this report over while this one was down
		// (its claim ran out): that host sends it.
		r.forget(e)
		r.removeSpoolFile(e.path)
		log.Warn().Str("report_id", env.ReportID).Msg("aggregate report sent by another host of the fleet; this copy dropped")
		return
	}
	err = r.deliver(ctx, cfg, env.From, env.To, msg)
	if err != nil && ctx.Err() != nil {
		log.Info().Err(err).Msg("shutting down during a delivery; the report stays spooled for the next start")
		return
	}
	env.Attempts++
	if err == nil {
		r.forget(e)
		r.count(func(s *Stats) { s.Sent++ })
		r.removeSpoolFile(e.path)
		log.Info().Int("attempts", env.Attempts).Msg(env.noun() + " sent")
		return
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 && se.Code < 600 && isTransactionError(err) {
		r.forget(e)
		r.count(func(s *Stats) { s.Dropped++ })
		r.removeSpoolFile(e.path)
		log.Error().Err(err).Int("attempts", env.Attempts).Msg(env.noun() + " refused permanently by the relay; dropped")
		return
	}
	if env.Attempts >= cfg.MaxAttempts {
		r.forget(e)
		r.count(func(s *Stats) { s.Dropped++ })
		r.removeSpoolFile(e.path)
		log.Error().Err(err).Int("attempts", env.Attempts).Msg(env.noun() + " not delivered after the last attempt; dropped")
		return
	}
	env.LastError = err.Error()
	env.NextAttempt = r.now().Add(cfg.backoff(env.Attempts))
	r.count(func(s *Stats) { s.Retried++ })
	ev := log.Warn()
	if !errors.As(err, &se) {
		// No SMTP reply at all: the relay is down or unreachable.
		ev = log.Error()
	}
	ev.Err(err).Str("relay", cfg.SMTP).Int("attempts", env.Attempts).Time("next_attempt", env.NextAttempt).
		Msg(env.noun() + " not delivered; will retry")
	if werr := writeSpoolFile(e.path, r.tmpPrefix, env, msg); werr != nil {
		// The old file stays, with its old attempt count; the in-memory
		// state below still paces the retries.
		log.Error().Err(werr).Str("path", e.path).Msg("cannot update spooled " + env.noun())
	}
	r.mu.Lock()
	e.env = env
	r.mu.Unlock()
}

// transactionError marks an SMTP reply to MAIL, RCPT or DATA: a 5xx there
// refuses this report, while a 5xx at EHLO, STARTTLS or AUTH is a relay
// configuration problem that is retried.
type transactionError struct{ err error }

func (t *transactionError) Error() string { return t.err.Error() }
func (t *transactionError) Unwrap() error { return t.err }

func isTransactionError(err error) bool {
	var t *transactionError
	return errors.As(err, &t)
}

// deliver sends one message over SMTP to the relay within SMTPTimeout. When
// ctx ends (shutdown) the connection is closed at once, whatever the relay
// is doing: a relay that hangs mid-DATA must not hold up a shutdown, and
// the report is still in the spool.
func (r *Reporter) deliver(ctx context.Context, cfg *Config, from, to string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.SMTPTimeout)
	defer cancel()

	c, conn, err := dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := c.Mail(from, nil); err != nil {
		return &transactionError{fmt.Errorf("MAIL FROM: %w", err)}
	}
	if err := c.Rcpt(to, nil); err != nil {
		return &transactionError{fmt.Errorf("RCPT TO: %w", err)}
	}
	wc, err := c.Data()
	if err != nil {
		return &transactionError{fmt.Errorf("DATA: %w", err)}
	}
	if _, err := wc.Write(msg); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := wc.Close(); err != nil {
		return &transactionError{fmt.Errorf("end of DATA: %w", err)}
	}
	c.Quit()
	return nil
}

// dial connects to the relay, says EHLO, does STARTTLS and AUTH as
// configured.
func dial(ctx context.Context, cfg *Config) (*smtp.Client, net.Conn, error) {
	host, _, _ := net.SplitHostPort(cfg.SMTP)
	connect := func() (*smtp.Client, net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", cfg.SMTP)
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to relay %s: %w", cfg.SMTP, err)
		}
		if dl, ok := ctx.Deadline(); ok {
			conn.SetDeadline(dl)
		}
		c := smtp.NewClient(conn)
		c.CommandTimeout = cfg.SMTPTimeout
		c.SubmissionTimeout = cfg.SMTPTimeout
		return c, conn, nil
	}

	c, conn, err := connect()
	if err != nil {
		return nil, nil, err
	}
	// Until deliver takes over, a shutdown closes the connection here.
	closeOnDone := func(cn net.Conn) func() bool { return context.AfterFunc(ctx, func() { cn.Close() }) }
	stop := closeOnDone(conn)
	defer func() { stop() }()
	if err := c.Hello(cfg.ReportingMTA); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("EHLO: %w", err)
	}
	tlsOn := false
	if cfg.StartTLS != StartTLSOff {
		offered, _ := c.Extension("STARTTLS")
		switch {
		case offered:
			// go-smtp starts TLS only from NewClientStartTLS, on a fresh
			// connection, before our EHLO: reconnect for it.
			c.Quit()
			tlsCfg := tlsConfig(cfg, host)
			var d net.Dialer
			conn, err = d.DialContext(ctx, "tcp", cfg.SMTP)
			if err != nil {
				return nil, nil, fmt.Errorf("connecting to relay %s: %w", cfg.SMTP, err)
			}
			stop()
			stop = closeOnDone(conn)
			if dl, ok := ctx.Deadline(); ok {
				conn.SetDeadline(dl)
			}
			c, err = smtp.NewClientStartTLS(conn, tlsCfg)
			if err != nil {
				conn.Close()
				return nil, nil, fmt.Errorf("STARTTLS with relay %s: %w", cfg.SMTP, err)
			}
			c.CommandTimeout = cfg.SMTPTimeout
			c.SubmissionTimeout = cfg.SMTPTimeout
			if err := c.Hello(cfg.ReportingMTA); err != nil {
				c.Close()
				return nil, nil, fmt.Errorf("EHLO after STARTTLS: %w", err)
			}
			tlsOn = true
		case cfg.StartTLS == StartTLSRequired:
			c.Close()
			return nil, nil, fmt.Errorf("relay %s does not offer STARTTLS, which is required", cfg.SMTP)
		}
	}
	if cfg.SMTPUser != "" {
		if !tlsOn && !isLoopback(conn) {
			c.Close()
			return nil, nil, fmt.Errorf("not sending the SMTP password to %s without TLS", cfg.SMTP)
		}
		if err := c.Auth(sasl.NewPlainClient("", cfg.SMTPUser, cfg.SMTPPassword)); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("AUTH PLAIN: %w", err)
		}
	}
	return c, conn, nil
}

func tlsConfig(c *Config, host string) *tls.Config {
	var cfg *tls.Config
	if c.TLS != nil {
		cfg = c.TLS.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if c.StartTLS == StartTLSOpportunistic {
		// Opportunistic TLS protects against passive listeners only; a
		// relay's certificate is often self-signed.
		cfg.InsecureSkipVerify = true
	}
	return cfg
}

func isLoopback(c net.Conn) bool {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.IsLoopback()
	}
	return false
}
