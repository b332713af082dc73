package outbox

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// maxIdle is the longest the sender sleeps without looking at the spool.
const maxIdle = time.Minute

// sendLoop delivers due reports until ctx ends.
func (o *Outbox) sendLoop(ctx context.Context) {
	for {
		for _, e := range o.due() {
			if ctx.Err() != nil {
				return
			}
			o.attempt(ctx, e)
		}
		wait := maxIdle
		if next, ok := o.nextDue(); ok {
			wait = min(max(next.Sub(o.now()), 0), maxIdle)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-o.wake:
		case <-t.C:
			o.scanSpool(false)
		}
		t.Stop()
	}
}

// due returns the reports whose next attempt has come, oldest first.
func (o *Outbox) due() []*entry {
	now := o.now()
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*entry
	for _, e := range o.pending {
		if !e.env.NextAttempt.After(now) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].env.Created.Before(out[j].env.Created) })
	return out
}

func (o *Outbox) nextDue() (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var next time.Time
	for _, e := range o.pending {
		if next.IsZero() || e.env.NextAttempt.Before(next) {
			next = e.env.NextAttempt
		}
	}
	return next, !next.IsZero()
}

func (o *Outbox) forget(e *entry) {
	o.mu.Lock()
	delete(o.pending, e.env.ID)
	o.mu.Unlock()
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
func (o *Outbox) attempt(ctx context.Context, e *entry) {
	// One configuration for the whole attempt, even if a reload comes
	// in the middle of it.
	cfg := o.conf()
	env, msg, err := readSpoolFile(e.path)
	if err != nil {
		o.log.Error().Err(err).Str("path", e.path).Msg("spooled report vanished or is unreadable; dropped")
		o.forget(e)
		o.counter(e.env.Kind).dropped.Add(1)
		o.removeSpoolFile(e.path)
		return
	}
	c := o.counter(env.Kind)
	log := o.log.With().Str("id", env.ID).Str("to", env.To).Str("domain", env.Domain).Str("queue_id", env.QueueID).
		Str("kind", env.Kind).Logger()
	o.mu.Lock()
	hook := o.hooks[env.Kind]
	o.mu.Unlock()
	if hook != nil && !hook(ctx, env) {
		o.forget(e)
		o.removeSpoolFile(e.path)
		return
	}
	err = deliver(ctx, cfg, env.From, env.To, msg)
	if err != nil && ctx.Err() != nil {
		log.Info().Err(err).Msg("shutting down during a delivery; the report stays spooled for the next start")
		return
	}
	env.Attempts++
	if err == nil {
		o.forget(e)
		c.sent.Add(1)
		o.removeSpoolFile(e.path)
		log.Info().Int("attempts", env.Attempts).Msg(env.noun() + " sent")
		return
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 && se.Code < 600 && isTransactionError(err) {
		o.forget(e)
		c.dropped.Add(1)
		o.removeSpoolFile(e.path)
		log.Error().Err(err).Int("attempts", env.Attempts).Msg(env.noun() + " refused permanently by the relay; dropped")
		return
	}
	if env.Attempts >= cfg.MaxAttempts {
		o.forget(e)
		c.dropped.Add(1)
		o.removeSpoolFile(e.path)
		log.Error().Err(err).Int("attempts", env.Attempts).Msg(env.noun() + " not delivered after the last attempt; dropped")
		return
	}
	env.LastError = err.Error()
	env.NextAttempt = o.now().Add(cfg.backoff(env.Attempts))
	c.retried.Add(1)
	ev := log.Warn()
	if !errors.As(err, &se) {
		// No SMTP reply at all: the relay is down or unreachable.
		ev = log.Error()
	}
	ev.Err(err).Str("relay", cfg.SMTP).Int("attempts", env.Attempts).Time("next_attempt", env.NextAttempt).
		Msg(env.noun() + " not delivered; will retry")
	if werr := writeSpoolFile(e.path, o.tmpPrefix, env, msg); werr != nil {
		// The old file stays, with its old attempt count; the in-memory
		// state below still paces the retries.
		log.Error().Err(werr).Str("path", e.path).Msg("cannot update spooled " + env.noun())
	}
	o.mu.Lock()
	e.env = env
	o.mu.Unlock()
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
func deliver(ctx context.Context, cfg *Config, from, to string, msg []byte) error {
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
	if err := c.Hello(cfg.Hello); err != nil {
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
			if err := c.Hello(cfg.Hello); err != nil {
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
