package session_test

import (
	"net"
	"slices"
	"testing"
	"time"
)

// nagleDialer dials TCP with Nagle's algorithm on, as Postfix's milter
// client does (it never sets TCP_NODELAY); Go turns it off by default.
type nagleDialer struct{}

func (nagleDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.SetNoDelay(false); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// TestTCPNoDelayedACKStall sends messages the way Postfix does over TCP:
// Nagle on, and the events after the negotiation written without waiting
// for replies (the no-reply options). A small write then waits for the
// acknowledgement of the previous one; if the milter lets its kernel delay
// that acknowledgement (40 ms minimum on Linux) because it has nothing to
// send, every message waits that long. The end-of-message reply must come
// far sooner.
func TestTCPNoDelayedACKStall(t *testing.T) {
	e := newEnv(t, envOptions{tcp: true})
	const n = 7
	var took []time.Duration
	for range n {
		s := e.dialWith(0, nagleDialer{})
		start := time.Now()
		connectAndHelo(t, s, goodIP, "mx.pass.example")
		check(t, send(t, s, msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "tcp")}), want{code: 250})
		took = append(took, time.Since(start))
		s.Close()
	}
	slices.Sort(took)
	// Linux's minimum delayed ACK is 40 ms (TCP_DELACK_MIN); a message
	// without the stall takes about a millisecond here. The median is
	// compared against half the delayed-ACK interval, so scheduling noise
	// on a busy host cannot fail it, and a stall on every message cannot
	// pass it.
	if med := took[n/2]; med >= 20*time.Millisecond {
		t.Errorf("median time per message over TCP with Nagle on = %v (all: %v), want well below the 40 ms delayed ACK", med, took)
	}
	t.Logf("per message over TCP: %v", took)
}
