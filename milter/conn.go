package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/internal/defaults"
)

// Protocol version we speak (Sendmail 8.14+ / Postfix 2.6+).
const protocolVersion = 6

// maxPacket bounds one command: a 64 KiB body chunk, or a header field
// (Postfix's header_size_limit defaults to 100 KiB), with room to spare.
const maxPacket = 1 << 20

// wantProtocol is what we ask the MTA for, masked by what it offers:
// skip the events we never use, keep the original leading space of header
// values (so header fields are rebuilt byte-exactly for DKIM), and send no
// reply for events we always continue on, which saves a round trip per
// header and per body chunk.
const wantProtocol = gomilter.OptNoRcptTo | gomilter.OptNoUnknown | gomilter.OptNoData |
	gomilter.OptHeaderLeadingSpace |
	gomilter.OptNoConnReply | gomilter.OptNoHeloReply | gomilter.OptNoMailReply |
	gomilter.OptNoHeaderReply | gomilter.OptNoEOHReply | gomilter.OptNoBodyReply |
	gomilter.OptNoRcptReply | gomilter.OptNoDataReply | gomilter.OptNoUnknownReply

// wantMacros are the macros asked for per stage when the MTA lets the milter
// choose (SMFIF_SETSYMLIST): the queue id ("i") at end of message, and the
// SASL login name at MAIL FROM (with "i", which Postfix knows there when it
// assigned the queue id early). No macros at the other stages.
var wantMacros = []struct {
	stage  gomilter.Stage
	macros string
}{
	{gomilter.StageConnect, ""},
	{gomilter.StageHelo, ""},
	{gomilter.StageMailFrom, "i {auth_authen}"},
	{gomilter.StageRcptTo, ""},
	{gomilter.StageData, ""},
	{gomilter.StageEOH, ""},
	{gomilter.StageEOM, "i"},
}

// Reply is a handler's answer to one event.
type Reply struct {
	code byte
	data []byte
}

// Replies without data.
var (
	Continue = Reply{code: byte(gomilter.ActContinue)}
	Accept   = Reply{code: byte(gomilter.ActAccept)}
	TempFail = Reply{code: byte(gomilter.ActTempFail)}
	Discard  = Reply{code: byte(gomilter.ActDiscard)}
)

// SMTPReply makes a reply that sets the SMTP status, e.g.
// SMTPReply(550, "5.7.1", "rejected"). A 4xx code temporarily fails and a 5xx
// code rejects the message. Postfix and Sendmail expand '%' in milter reply
// text, so it is escaped here; CR and LF are replaced by spaces.
func SMTPReply(code int, enhanced, text string) Reply {
	text = strings.NewReplacer("%", "%%", "\r", " ", "\n", " ", "\x00", "").Replace(text)
	return Reply{code: byte(gomilter.ActReplyCode), data: fmt.Appendf(nil, "%03d %s %s\x00", code, enhanced, text)}
}

// Conn is one milter connection as its handler sees it: the macros the MTA
// sent, what was negotiated, and the modifications allowed at end of
// message.
type Conn struct {
	nc  net.Conn
	srv *Server
	br  *bufio.Reader
	bw  *bufio.Writer

	version  uint32
	actions  uint32
	protocol gomilter.OptProtocol
	family   gomilter.ProtoFamily // of the client, from the connect command

	// Macros: those sent for the connect and HELO stages last for the
	// connection; those of the message stages are dropped when a new
	// message starts or the message is aborted.
	connMacros map[string]string
	msgMacros  map[string]string

	// Commands are read into small (most commands) or a buffer from the
	// server's pool (body chunks), returned once the command is handled:
	// nothing a handler is given may be kept after it returns (strings are
	// copied, body chunks hashed or copied). So a 50 MB message streams
	// through one pooled 64 KiB buffer instead of 800 allocations, and an
	// idle connection holds no large buffer.
	small  [1024]byte
	pooled *[]byte

	// mu guards idle and the read deadline against drain.
	mu       sync.Mutex
	idle     bool      // between messages
	rdl, wdl time.Time // the read and write deadlines last set
	draining atomic.Bool
	inEOM    bool
}

func newConn(nc net.Conn, srv *Server) *Conn {
	rw := newRawIO(nc)
	return &Conn{
		nc:         nc,
		srv:        srv,
		br:         bufio.NewReaderSize(rw, 4<<10),
		bw:         bufio.NewWriterSize(rw, 1<<10),
		connMacros: make(map[string]string),
		msgMacros:  make(map[string]string),
		idle:       true,
	}
}

// Macro returns the value of a macro sent by the MTA at any stage of the
// connection or of the current message ("" if not sent), e.g. "i" (the
// queue id) or "{auth_authen}".
func (c *Conn) Macro(name string) string {
	if v, ok := c.msgMacros[name]; ok {
		return v
	}
	return c.connMacros[name]
}

// LeadingSpace reports whether header values arrive with their original
// leading white space (SMFIP_HDR_LEADSPC negotiated).
func (c *Conn) LeadingSpace() bool {
	return c.protocol&gomilter.OptHeaderLeadingSpace != 0
}

// RemoteAddr is the MTA's end of the milter connection.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// ClientHasAddress reports whether the MTA described the SMTP client as an
// IPv4 or IPv6 peer (the address given to Handler.Connect is then nil only
// if it did not parse); false for a unix-socket or unknown client.
func (c *Conn) ClientHasAddress() bool {
	return c.family == gomilter.FamilyInet || c.family == gomilter.FamilyInet6
}

var errNotEOM = errors.New("milter: message modifications are only allowed at end of message")

func (c *Conn) modify(code gomilter.ModifyActCode, need gomilter.OptAction, data []byte) error {
	if !c.inEOM {
		return errNotEOM
	}
	if c.actions&uint32(need) == 0 {
		return fmt.Errorf("milter: action %q was not negotiated with the MTA", code)
	}
	return c.writePacket(byte(code), data)
}

// headerData encodes [index] name NUL value NUL; Postfix wants LF line
// endings inside values (CRLF would become a double CR).
func headerData(index int, withIndex bool, name, value string) []byte {
	var b []byte
	if withIndex {
		b = binary.BigEndian.AppendUint32(b, uint32(index))
	}
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, strings.ReplaceAll(value, "\r\n", "\n")...)
	return append(b, 0)
}

// InsertHeader inserts a header field at index (0 = top of the header).
// value is written after "name: ".
func (c *Conn) InsertHeader(index int, name, value string) error {
	if c.LeadingSpace() {
		// With SMFIP_HDR_LEADSPC the MTA adds no space of its own.
		value = " " + value
	}
	return c.modify(gomilter.ActInsertHeader, gomilter.OptAddHeader, headerData(index, true, name, value))
}

// DeleteHeader removes the index'th (1-based) field called name.
func (c *Conn) DeleteHeader(index int, name string) error {
	return c.modify(gomilter.ActChangeHeader, gomilter.OptChangeHeader, headerData(index, true, name, ""))
}

// Quarantine asks the MTA to hold the message (Postfix: the hold queue).
func (c *Conn) Quarantine(reason string) error {
	return c.modify(gomilter.ActQuarantine, gomilter.OptQuarantine, append([]byte(reason), 0))
}

// CanQuarantine reports whether the MTA granted the quarantine action.
func (c *Conn) CanQuarantine() bool { return c.actions&uint32(gomilter.OptQuarantine) != 0 }

func (c *Conn) writePacket(code byte, data []byte) error {
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(data)+1))
	hdr[4] = code
	c.bw.Write(hdr[:])
	_, err := c.bw.Write(data)
	return err
}

func (c *Conn) flush() error {
	if c.bw.Buffered() == 0 {
		return nil
	}
	if want := time.Now().Add(c.srv.timeouts().Write); want.Sub(c.wdl) > deadlineSlack {
		c.nc.SetWriteDeadline(want)
		c.wdl = want
	}
	return c.bw.Flush()
}

// deadlineSlack is how stale a socket deadline may get before it is moved:
// setting one costs a trip through the runtime's poller, and commands
// arrive many times a second.
const deadlineSlack = time.Second

// setReadDeadline makes the read deadline about d from now; c.mu is held.
func (c *Conn) setReadDeadline(d time.Duration) {
	want := time.Now().Add(d)
	if want.Before(c.rdl) || want.Sub(c.rdl) > deadlineSlack {
		c.nc.SetReadDeadline(want)
		c.rdl = want
	}
}

func (s *Server) timeouts() Timeouts {
	t := s.Timeouts
	t.Idle = defaults.Positive(t.Idle, DefaultTimeouts.Idle)
	t.Read = defaults.Positive(t.Read, DefaultTimeouts.Read)
	t.Write = defaults.Positive(t.Write, DefaultTimeouts.Write)
	return t
}

// drain makes the connection end at the next point between messages.
func (c *Conn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining.Store(true)
	if c.idle {
		c.rdl = time.Now()
		c.nc.SetReadDeadline(c.rdl)
	}
}

func (c *Conn) setIdle(idle bool) {
	c.mu.Lock()
	c.idle = idle
	c.mu.Unlock()
}

var errQuit = errors.New("quit")

// serve runs the command loop of one connection.
func (c *Conn) serve(h Handler) {
	log := c.srv.Log.With().Str("milter_peer", c.nc.RemoteAddr().String()).Logger()
	defer func() {
		if v := recover(); v != nil {
			log.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).
				Msg("panic in milter session; closing this connection only")
		}
		func() {
			defer func() {
				if v := recover(); v != nil {
					log.Error().Str("panic", fmt.Sprint(v)).Msg("panic while closing milter session")
				}
			}()
			h.Close(c)
		}()
		c.nc.Close()
	}()

	t := c.srv.timeouts()
	for {
		code, data, err := c.readPacket(t)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF), c.draining.Load() && errors.Is(err, os.ErrDeadlineExceeded):
			case errors.Is(err, os.ErrDeadlineExceeded):
				log.Warn().Err(err).Msg("milter connection timed out")
			default:
				log.Warn().Err(err).Msg("milter connection failed")
			}
			return
		}
		reply, send, err := c.dispatch(h, gomilter.Code(code), data)
		c.release()
		if err == errQuit {
			return
		}
		if err != nil {
			log.Warn().Err(err).Str("command", string(rune(code))).Msg("bad milter command; closing connection")
			return
		}
		if send {
			c.writePacket(reply.code, reply.data)
		}
		if err := c.flush(); err != nil {
			log.Warn().Err(err).Msg("milter write failed")
			return
		}
	}
}

// readPacket reads one command: the idle timeout applies until its first
// byte, the read timeout to the rest.
func (c *Conn) readPacket(t Timeouts) (byte, []byte, error) {
	c.mu.Lock()
	if c.draining.Load() && c.idle {
		c.mu.Unlock()
		return 0, nil, os.ErrDeadlineExceeded
	}
	if c.br.Buffered() == 0 { // about to wait for the next command
		c.setReadDeadline(t.Idle)
	}
	c.mu.Unlock()
	if _, err := c.br.Peek(1); err != nil {
		return 0, nil, err
	}
	if c.br.Buffered() < 4 {
		c.mu.Lock()
		c.setReadDeadline(t.Read)
		c.mu.Unlock()
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxPacket {
		return 0, nil, fmt.Errorf("milter: invalid packet length %d", n)
	}
	if c.br.Buffered() < int(n) { // the rest must come within the read timeout
		c.mu.Lock()
		c.setReadDeadline(t.Read)
		c.mu.Unlock()
	}
	var buf []byte
	switch {
	case n <= uint32(len(c.small)):
		buf = c.small[:n]
	case n <= reuseMax:
		c.pooled = c.srv.buffer()
		buf = (*c.pooled)[:n]
	default:
		buf = make([]byte, n) // a rare large header field
	}
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	return buf[0], buf[1:], nil
}

// release gives a pooled command buffer back once the command is handled.
func (c *Conn) release() {
	if c.pooled != nil {
		c.srv.bufs.Put(c.pooled)
		c.pooled = nil
	}
}

// reuseMax is the largest command read into a pooled buffer: a full body
// chunk (64 KiB) and its command byte.
const reuseMax = 64<<10 + 16

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// noReply reports whether the negotiated options say the MTA expects no
// reply to this command.
func (c *Conn) noReply(opt gomilter.OptProtocol) bool { return c.protocol&opt != 0 }

// dispatch decodes one command and calls the handler. It returns the reply
// and whether to send it.
func (c *Conn) dispatch(h Handler, code gomilter.Code, data []byte) (Reply, bool, error) {
	switch code {
	case gomilter.CodeOptNeg:
		return c.negotiate(data)
	case gomilter.CodeMacro:
		if len(data) == 0 {
			return Reply{}, false, errors.New("empty macro command")
		}
		c.setMacros(gomilter.Code(data[0]), data[1:])
		return Reply{}, false, nil
	case gomilter.CodeConn:
		host, rest, ok := cut0(data)
		if !ok || len(rest) < 1 {
			return Reply{}, false, errors.New("malformed connect command")
		}
		var addr net.IP
		family := gomilter.ProtoFamily(rest[0])
		c.family = family
		rest = rest[1:]
		if family == gomilter.FamilyInet || family == gomilter.FamilyInet6 {
			if len(rest) < 2 {
				return Reply{}, false, errors.New("malformed connect command: no port")
			}
			a, _, _ := cut0(rest[2:])
			addr = net.ParseIP(strings.TrimPrefix(string(a), "IPv6:"))
		}
		return h.Connect(c, string(host), addr), !c.noReply(gomilter.OptNoConnReply), nil
	case gomilter.CodeHelo:
		name, _, _ := cut0(data)
		return h.Helo(c, string(name)), !c.noReply(gomilter.OptNoHeloReply), nil
	case gomilter.CodeMail:
		args := splitArgs(data)
		if len(args) == 0 {
			return Reply{}, false, errors.New("malformed MAIL command")
		}
		c.setIdle(false)
		return h.MailFrom(c, args[0], args[1:]), !c.noReply(gomilter.OptNoMailReply), nil
	case gomilter.CodeRcpt:
		reply := Continue
		if rh, ok := h.(RcptHandler); ok {
			if args := splitArgs(data); len(args) > 0 {
				reply = rh.RcptTo(c, args[0], args[1:])
			}
		}
		return reply, !c.noReply(gomilter.OptNoRcptReply), nil
	case gomilter.CodeData:
		return Continue, !c.noReply(gomilter.OptNoDataReply), nil
	case gomilter.Code('U'): // SMFIC_UNKNOWN
		return Continue, !c.noReply(gomilter.OptNoUnknownReply), nil
	case gomilter.CodeHeader:
		name, rest, ok := cut0(data)
		if !ok {
			return Reply{}, false, errors.New("malformed header command")
		}
		value, _, _ := cut0(rest)
		return h.Header(c, string(name), string(value)), !c.noReply(gomilter.OptNoHeaderReply), nil
	case gomilter.CodeEOH:
		return h.EndOfHeaders(c), !c.noReply(gomilter.OptNoEOHReply), nil
	case gomilter.CodeBody:
		return h.Body(c, data), !c.noReply(gomilter.OptNoBodyReply), nil
	case gomilter.CodeEOB:
		if len(data) > 0 { // a last body chunk may ride along
			h.Body(c, data)
		}
		c.inEOM = true
		r := h.EndOfMessage(c)
		c.inEOM = false
		c.endMessage()
		return r, true, nil
	case gomilter.CodeAbort:
		h.Abort(c)
		c.endMessage()
		return Reply{}, false, nil
	case gomilter.CodeQuitNewConn:
		// The MTA reuses this socket for a new SMTP connection.
		h.Abort(c)
		c.endMessage()
		clear(c.connMacros)
		return Reply{}, false, nil
	case gomilter.CodeQuit:
		return Reply{}, false, errQuit
	}
	return Reply{}, false, fmt.Errorf("unknown command %q", rune(code))
}

func (c *Conn) endMessage() {
	clear(c.msgMacros)
	c.setIdle(true)
}

// negotiate answers SMFIC_OPTNEG: our version and the actions and protocol
// options we want, each limited to what the MTA offered.
func (c *Conn) negotiate(data []byte) (Reply, bool, error) {
	if len(data) < 12 {
		return Reply{}, false, errors.New("malformed option negotiation")
	}
	mtaVersion := binary.BigEndian.Uint32(data[0:4])
	mtaActions := binary.BigEndian.Uint32(data[4:8])
	mtaProtocol := gomilter.OptProtocol(binary.BigEndian.Uint32(data[8:12]))
	if mtaVersion < 2 {
		return Reply{}, false, fmt.Errorf("unsupported milter protocol version %d", mtaVersion)
	}
	c.version = min(mtaVersion, protocolVersion)
	c.actions = c.srv.Actions & mtaActions
	want := wantProtocol
	if c.srv.Recipients {
		want &^= gomilter.OptNoRcptTo
	}
	c.protocol = want & mtaProtocol
	c.srv.Log.Debug().Uint32("mta_version", mtaVersion).Str("mta_actions", fmt.Sprintf("%#x", mtaActions)).
		Str("mta_protocol", fmt.Sprintf("%#x", uint32(mtaProtocol))).Uint32("version", c.version).
		Str("actions", fmt.Sprintf("%#x", c.actions)).Str("protocol", fmt.Sprintf("%#x", uint32(c.protocol))).
		Msg("milter options negotiated")
	symList := c.version >= 6 && mtaActions&uint32(gomilter.OptSetSymList) != 0
	if symList {
		c.actions |= uint32(gomilter.OptSetSymList)
	}
	var b []byte
	b = binary.BigEndian.AppendUint32(b, c.version)
	b = binary.BigEndian.AppendUint32(b, c.actions)
	b = binary.BigEndian.AppendUint32(b, uint32(c.protocol))
	if symList {
		// SMFIR_SETSYMLIST: only the macros we use, so the MTA sends
		// fewer macro packets per message (Postfix sends several per
		// stage by default).
		for _, st := range wantMacros {
			b = binary.BigEndian.AppendUint32(b, uint32(st.stage))
			b = append(b, st.macros...)
			b = append(b, 0)
		}
	}
	return Reply{code: byte(gomilter.CodeOptNeg), data: b}, true, nil
}

// setMacros stores the macros sent before the command called stage.
// Bounds on the macros kept: Postfix sends a handful per stage (and only
// those asked for with SETSYMLIST); whatever a peer sends beyond is
// dropped, so that macros cannot pile up over a long connection.
const (
	maxMacros          = 64   // per set: the connection's, the message's
	maxMacroNameLength = 64   // longer names are dropped
	maxMacroValue      = 1024 // longer values are cut
)

func (c *Conn) setMacros(stage gomilter.Code, data []byte) {
	m := c.msgMacros
	switch stage {
	case gomilter.CodeConn:
		clear(c.connMacros) // a new SMTP connection starts
		m = c.connMacros
	case gomilter.CodeHelo:
		m = c.connMacros
	case gomilter.CodeMail:
		clear(c.msgMacros) // a new message starts
	}
	for len(data) > 0 {
		var k, v []byte
		k, data, _ = cut0(data)
		v, data, _ = cut0(data)
		if len(k) == 0 || len(k) > maxMacroNameLength {
			continue
		}
		if _, ok := m[string(k)]; !ok && len(m) >= maxMacros {
			continue
		}
		m[string(k)] = string(v[:min(len(v), maxMacroValue)])
	}
}

// cut0 splits b at its first NUL; ok is false when there is none.
func cut0(b []byte) (before, after []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return b, nil, false
	}
	return b[:i], b[i+1:], true
}

func splitArgs(b []byte) []string {
	var args []string
	for len(b) > 0 {
		var a []byte
		a, b, _ = cut0(b)
		args = append(args, string(a))
	}
	return args
}
