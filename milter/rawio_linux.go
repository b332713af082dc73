package milter

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// rawIO reads and writes a connected socket with raw read(2) and write(2)
// calls, and waits for readiness through the runtime's network poller
// (syscall.RawConn), so deadlines and Close work as with net.Conn.
//
// Why not net.Conn's own Read and Write: they enter the scheduler's
// system-call state, and the first such call after the whole process was
// idle wakes the runtime's monitor thread (sysmon), which then polls every
// 20 µs for a millisecond or more. A milter connection wakes a few times per
// message (negotiation, the envelope, the content, the next connection) and
// the process is idle in between, so on a small host shared with Postfix
// that monitor churn cost more CPU than the milter's own work (measured with
// strace -c: about ten nanosleep and seven futex calls per message).
// RawSyscall is only for calls that cannot block; read and write on a
// non-blocking socket return EAGAIN instead of blocking, and the runtime's
// sockets are always non-blocking.
type rawIO struct {
	rc syscall.RawConn

	// The current read's and write's buffer and outcome, apart so that a
	// read and a write may run at the same time, as on a net.Conn.
	// readFn and writeFn are bound once so that a call allocates nothing.
	rd, wr  rawCall
	readFn  func(uintptr) bool
	writeFn func(uintptr) bool

	// quickAck: the socket is TCP, and every read is followed by
	// TCP_QUICKACK (see ackNow).
	quickAck bool
}

// rawCall is the state of one read or write.
type rawCall struct {
	p     []byte
	n     int
	errno syscall.Errno
}

// do makes the system call trap (read or write) on fd; it reports false,
// to wait for the poller, when the socket is not ready.
func (c *rawCall) do(trap, fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&c.p[0])), uintptr(len(c.p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.n, c.errno = int(n), e
		return true
	}
}

// newRawIO returns a reader and writer for nc: rawIO for the sockets of the
// net package, nc itself for anything else.
func newRawIO(nc net.Conn) io.ReadWriter {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	_, isTCP := nc.(*net.TCPConn)
	r := &rawIO{rc: rc, quickAck: isTCP}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

func (r *rawIO) read(fd uintptr) bool {
	if !r.rd.do(syscall.SYS_READ, fd) {
		return false
	}
	if r.quickAck && r.rd.n > 0 {
		ackNow(fd)
	}
	return true
}

// ackNow acknowledges what was read at once (TCP_QUICKACK, tcp(7)).
//
// Why: with the no-reply options negotiated, Postfix writes several milter
// events in a row without waiting for an answer, and it leaves Nagle's
// algorithm on (no TCP_NODELAY). Its second small write then waits until
// the first is acknowledged; the milter has nothing to send back, so
// Linux delays that acknowledgement by its minimum of 40 ms, and every
// message waited that long over TCP (measured: 44 ms per message on
// loopback, 0.4 ms with Nagle off on the client side; unix sockets have no
// acknowledgements). Quick-ack mode is not sticky (the kernel leaves it on
// its own), so it is set again after every read that returned data; a
// failure only means the old delay, so it is not reported.
func ackNow(fd uintptr) {
	one := int32(1)
	syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_QUICKACK,
		uintptr(unsafe.Pointer(&one)), unsafe.Sizeof(one), 0)
}
func (r *rawIO) write(fd uintptr) bool { return r.wr.do(syscall.SYS_WRITE, fd) }

// Read reads once, like net.Conn's Read: io.EOF when the peer closed.
func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rd = rawCall{p: p}
	err := r.rc.Read(r.readFn)
	n, errno := r.rd.n, r.rd.errno
	r.rd.p = nil
	switch {
	case err != nil:
		return 0, err // deadline exceeded, or the connection was closed
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "milter", Err: errno}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting for the socket to take more as needed.
func (r *rawIO) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		r.wr = rawCall{p: p[done:]}
		err := r.rc.Write(r.writeFn)
		n, errno := r.wr.n, r.wr.errno
		r.wr.p = nil
		switch {
		case err != nil:
			return done, err
		case errno != 0:
			return done, &net.OpError{Op: "write", Net: "milter", Err: errno}
		case n == 0:
			return done, io.ErrShortWrite
		}
		done += n
	}
	return done, nil
}
