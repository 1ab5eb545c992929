package smtpoauth

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestPoolErrorRules(t *testing.T) {
	t.Parallel()
	opErr := func(err error) error { return &net.OpError{Op: "read", Net: "tcp", Err: err} }
	sendErr := func(stage Stage, err error) error { return &SendError{Stage: stage, Err: err} }
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name       string
		ctx        context.Context // default: live
		err        error
		redialable bool // at the first command of a reused connection
		reusable   bool // the connection may carry the next message
	}{
		{name: "Success", err: nil, reusable: true},
		{name: "Reply421", err: sendErr(StageMail, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}}), redialable: true},
		{name: "Reply421ToRset", err: sendErr(StageReset, &smtp.SMTPError{Code: 421}), redialable: true},
		{name: "Reply451", err: sendErr(StageMail, &smtp.SMTPError{Code: 451}), reusable: true},
		{name: "Reply550", err: sendErr(StageRcpt, &smtp.SMTPError{Code: 550}), reusable: true},
		{name: "EOF", err: sendErr(StageMail, io.EOF), redialable: true},
		{name: "UnexpectedEOF", err: sendErr(StageMail, io.ErrUnexpectedEOF), redialable: true},
		{name: "ClosedConnection", err: sendErr(StageMail, opErr(net.ErrClosed)), redialable: true},
		{name: "ConnectionReset", err: sendErr(StageMail, opErr(os.NewSyscallError("read", syscall.ECONNRESET))), redialable: true},
		{name: "BrokenPipe", err: sendErr(StageReset, opErr(os.NewSyscallError("write", syscall.EPIPE))), redialable: true},
		{name: "Timeout", err: sendErr(StageMail, opErr(os.ErrDeadlineExceeded))},
		{name: "ContextEnded", ctx: cancelled, err: sendErr(StageMail, fmt.Errorf("%w: %w", context.Canceled, io.EOF))},
		{name: "MalformedReply", err: sendErr(StageMail, textproto.ProtocolError("short response: 25"))},
		{name: "InvalidMessage", err: sendErr(StageMail, fmt.Errorf("%w: not ASCII", ErrInvalidMessage)), reusable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			if tt.err != nil {
				if got := redialable(ctx, tt.err); got != tt.redialable {
					t.Errorf("redialable(%v) = %t, want %t", tt.err, got, tt.redialable)
				}
			}
			if got := reusable(tt.err); got != tt.reusable {
				t.Errorf("reusable(%v) = %t, want %t", tt.err, got, tt.reusable)
			}
		})
	}
}
