package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
)

// countingWriter counts the writes it gets.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	b      bytes.Buffer
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.b.Write(p)
}

func (c *countingWriter) state() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.b.String()
}

// Lines are written together within the interval, whole and in order;
// a full batch and Flush write at once; nothing is lost.
func TestBatchWriter(t *testing.T) {
	out := &countingWriter{}
	b := newBatchWriter(out, 50*time.Millisecond)
	for i := range 100 {
		b.Write([]byte(strings.Repeat("x", i%7) + "line\n"))
	}
	if n, _ := out.state(); n != 0 {
		t.Errorf("%d writes before the interval, want 0", n)
	}
	testutil.WaitFor(t, "the interval's flush", func() bool { n, _ := out.state(); return n == 1 })
	if _, s := out.state(); strings.Count(s, "line\n") != 100 {
		t.Errorf("%d lines written, want 100", strings.Count(s, "line\n"))
	}

	// A full batch goes at once; Flush writes the rest.
	big := []byte(strings.Repeat("y", 1000) + "\n")
	for range logBatchSize/len(big) + 1 {
		b.Write(big)
	}
	if n, _ := out.state(); n != 2 {
		t.Errorf("%d writes after a full batch, want 2", n)
	}
	b.Flush()
	if n, s := out.state(); n != 3 || strings.Count(s, "y\n") != logBatchSize/len(big)+1 {
		t.Errorf("%d writes, %d long lines after Flush", n, strings.Count(s, "y\n"))
	}
	if err := b.Flush(); err != nil {
		t.Error(err)
	}
	if n, _ := out.state(); n != 3 {
		t.Error("an empty Flush wrote")
	}
}
