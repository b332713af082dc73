package milter

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// socketPair returns both ends of a unix socket connection.
func socketPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	a, err = net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-done
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRawIO(t *testing.T) {
	t.Run("large write waits for the reader", func(t *testing.T) {
		a, b := socketPair(t)
		w, r := newRawIO(a), newRawIO(b)
		if _, ok := w.(*rawIO); !ok {
			t.Fatalf("newRawIO(%T) = %T, want *rawIO", a, w)
		}
		// Far more than the socket buffers hold: Write must wait for
		// writability through the poller, more than once.
		data := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
		errc := make(chan error, 1)
		go func() {
			n, err := w.Write(data)
			if err == nil && n != len(data) {
				err = io.ErrShortWrite
			}
			errc <- err
			a.Close()
		}()
		var got bytes.Buffer
		buf := make([]byte, 3000)
		for {
			n, err := r.Read(buf)
			got.Write(buf[:n])
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Len() < 64<<10 {
				time.Sleep(time.Millisecond) // a slow reader at first
			}
		}
		if err := <-errc; err != nil {
			t.Fatalf("Write: %v", err)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("read %d bytes, not what was written (%d bytes)", got.Len(), len(data))
		}
	})
	t.Run("reads and writes at the same time", func(t *testing.T) {
		a, b := socketPair(t)
		rw := newRawIO(a)
		go io.Copy(b, b) // the peer echoes
		data := bytes.Repeat([]byte("full duplex "), 1<<17)
		errc := make(chan error, 1)
		go func() {
			_, err := rw.Write(data)
			errc <- err
		}()
		got := make([]byte, len(data))
		if _, err := io.ReadFull(rw, got); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("echo differs from what was written")
		}
	})
	t.Run("read deadline", func(t *testing.T) {
		a, _ := socketPair(t)
		r := newRawIO(a)
		a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		start := time.Now()
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v, want a deadline error", err)
		}
		if d := time.Since(start); d < 40*time.Millisecond || d > 5*time.Second {
			t.Errorf("deadline hit after %v", d)
		}
	})
	t.Run("read after local close", func(t *testing.T) {
		a, _ := socketPair(t)
		r := newRawIO(a)
		a.Close()
		if _, err := r.Read(make([]byte, 10)); err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("Read on a closed connection = %v, want an error other than EOF", err)
		}
	})
	t.Run("write to a closed peer", func(t *testing.T) {
		a, b := socketPair(t)
		w := newRawIO(a)
		b.Close()
		var err error
		for range 100 {
			if _, err = w.Write(make([]byte, 64<<10)); err != nil {
				break
			}
		}
		if err == nil {
			t.Fatal("writes to a closed peer kept succeeding")
		}
	})
	t.Run("other connections are used as they are", func(t *testing.T) {
		p, q := net.Pipe()
		defer p.Close()
		defer q.Close()
		if rw := newRawIO(p); rw != io.ReadWriter(p) {
			t.Fatalf("newRawIO(net.Pipe) = %T, want the pipe itself", rw)
		}
	})
}
