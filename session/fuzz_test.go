package session_test

import (
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/milter"
)

// packet encodes one milter command.
func packet(code byte, data ...string) []byte {
	body := []byte{code}
	for _, d := range data {
		body = append(body, d...)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// FuzzSession feeds arbitrary command streams, after a valid start, to the
// real server and session: whatever arrives, no session may panic.
func FuzzSession(f *testing.F) {
	var start []byte
	start = append(start, packet('O', "\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")...)
	start = append(start, packet('C', "client\x00", "4", "\x9c\x40", "203.0.113.66\x00")...)
	start = append(start, packet('H', "x.example\x00")...)
	for _, seed := range [][]byte{
		append(packet('M', "<bob@pass.example>\x00"), append(packet('L', "From\x00", " bob@pass.example\x00"), append(packet('N'), packet('E')...)...)...),
		append(packet('M', "<>\x00"), append(packet('L', "DKIM-Signature\x00", " v=1; a=rsa-sha256; d=pass.example; s=sel1; h=from; bh=; b=\x00"), append(packet('N'), append(packet('B', "body\r\n"), packet('E')...)...)...)...),
		append(packet('D', "M", "{auth_authen}\x00x\x00"), packet('A')...),
		packet('L', "From\x00"),
		packet('E'),
		packet('K'),
	} {
		f.Add(seed)
	}
	e := newEnv(f, envOptions{timeouts: timeoutsForFuzz})
	f.Fuzz(func(t *testing.T, input []byte) {
		c, err := net.Dial("unix", e.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write(start)
		c.Write(input)
		c.(*net.UnixConn).CloseWrite() // EOF: the session ends without waiting for a timeout
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		if l := e.logs.String(); strings.Contains(l, `"message":"panic in`) || strings.Contains(l, `"message":"panic while`) {
			t.Fatalf("a session panicked on %q:\n%s", input, l)
		}
	})
}

var timeoutsForFuzz = milter.Timeouts{Idle: time.Second, Read: 100 * time.Millisecond, Write: time.Second}
