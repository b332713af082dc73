package main

import (
	"io"
	"sync"
	"time"
)

// Log batching: the daemon logs one line per message, and a write(2) per
// line is a syscall (and a wake-up of journald) per message. A
// batchWriter gathers lines and writes them together, at most
// logFlushInterval after the first of a batch or when logBatchSize bytes
// are waiting, and at once on Flush (shutdown). A line is never split or
// lost by the batching itself; a crash or kill -9 loses at most the lines
// of the last logFlushInterval.
const (
	logFlushInterval = 100 * time.Millisecond
	logBatchSize     = 64 << 10
)

type batchWriter struct {
	mu       sync.Mutex
	out      io.Writer
	buf      []byte
	interval time.Duration
	timer    *time.Timer
	armed    bool
}

func newBatchWriter(out io.Writer, interval time.Duration) *batchWriter {
	b := &batchWriter{out: out, interval: interval, buf: make([]byte, 0, logBatchSize)}
	b.timer = time.AfterFunc(time.Hour, func() { b.Flush() })
	b.timer.Stop()
	return b
}

// Write takes whole lines (zerolog writes one event per call).
func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > logBatchSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) > logBatchSize {
		return b.out.Write(p)
	}
	b.buf = append(b.buf, p...)
	if !b.armed {
		b.armed = true
		b.timer.Reset(b.interval)
	}
	return len(p), nil
}

// Flush writes what is waiting.
func (b *batchWriter) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *batchWriter) flushLocked() error {
	b.armed = false
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.out.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}
