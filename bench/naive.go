package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// naiveHandler is the baseline a user would write in an afternoon: an asynq
// handler that sends each task with go-smtp over a pool of connections that
// were opened, upgraded with STARTTLS and authenticated with XOAUTH2 once,
// one per asynq worker goroutine. No ledger, no receipts, no limits, no
// classification of failures.
type naiveHandler struct {
	clients chan *smtp.Client
}

// newNaiveHandler dials n authenticated connections to srv as user.
func newNaiveHandler(srv *smtpoauthtest.Server, user string, n int) (*naiveHandler, error) {
	h := &naiveHandler{clients: make(chan *smtp.Client, n)}
	token := srv.IssueAccessToken(user)
	tlsConfig := &tls.Config{RootCAs: srv.CertPool(), ServerName: smtpoauthtest.DefaultHostname}
	for range n {
		c, err := smtp.DialStartTLS(srv.SMTPAddr, tlsConfig)
		if err != nil {
			h.close()
			return nil, fmt.Errorf("naive handler: dial: %w", err)
		}
		if err := c.Auth(&xoauth2{user: user, token: token}); err != nil {
			c.Close()
			h.close()
			return nil, fmt.Errorf("naive handler: auth: %w", err)
		}
		h.clients <- c
	}
	return h, nil
}

// ProcessTask sends the task's message over a pooled connection.
func (h *naiveHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p tasks.Payload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("decode payload: %w: %w", err, asynq.SkipRetry)
	}
	msg, err := p.BuildMIME()
	if err != nil {
		return fmt.Errorf("build message: %w: %w", err, asynq.SkipRetry)
	}
	from, rcpts := p.Envelope()
	c := <-h.clients
	defer func() { h.clients <- c }()
	if err := c.Reset(); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// close ends the pooled connections with QUIT.
func (h *naiveHandler) close() {
	for {
		select {
		case c := <-h.clients:
			c.Quit()
		default:
			return
		}
	}
}

// xoauth2 is the client side of SASL XOAUTH2 (Google's), in its simplest
// form: the initial response and no error challenge handling.
type xoauth2 struct{ user, token string }

var _ sasl.Client = (*xoauth2)(nil)

func (x *xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2) Next(challenge []byte) ([]byte, error) {
	return nil, errors.New("xoauth2: token refused")
}
