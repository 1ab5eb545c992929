package tasks_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/tasks"
)

func ExampleEmail_Validate() {
	e := &tasks.Email{
		AccountID: "support",
		From:      "Support <support@example.com>",
		To:        []string{"alice@example.org", "bob"},
		Text:      "Hello",
	}
	err := e.Validate()
	fmt.Println(err)

	var ve *tasks.ValidationError
	if errors.As(err, &ve) {
		fmt.Println("field:", ve.Field)
	}
	fmt.Println("invalid email:", errors.Is(err, tasks.ErrInvalidEmail))
	// Output:
	// invalid email: to[1]: missing '@' or angle-addr
	// field: to[1]
	// invalid email: true
}

func ExampleEmail_Envelope() {
	e := &tasks.Email{
		From: "Support <support@example.com>",
		To:   []string{"Alice <Alice@example.org>"},
		Cc:   []string{"alice@example.org", "carol@example.org"},
		Bcc:  []string{"audit@example.com"},
	}
	from, rcpts := e.Envelope()
	fmt.Println(from)
	fmt.Println(rcpts)
	// Output:
	// support@example.com
	// [Alice@example.org carol@example.org audit@example.com]
}

func ExampleNewTask() {
	task, p, err := tasks.NewTask(&tasks.Email{
		AccountID: "support",
		From:      "Support <support@example.com>",
		To:        []string{"alice@example.org"},
		Subject:   "Your order",
		Text:      "It has shipped.",
	}, tasks.IdempotencyKey("order-42-shipped"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(task.Type())
	// With an idempotency key the Message-ID is derived from account and
	// key: the same on every call.
	fmt.Println(p.MessageID)

	// The worker side.
	decoded, err := tasks.DecodePayload(task.Payload())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(decoded.Version, decoded.Subject, decoded.IdempotencyKey)
	// Output:
	// email:send
	// <i2jt6xhedjzpoc3n6y4e25zzcy@example.com>
	// 1 Your order order-42-shipped
}

func ExampleDecodePayload() {
	_, err := tasks.DecodePayload([]byte(`{"v":2,"account_id":"support"}`))
	fmt.Println(err)
	fmt.Println(errors.Is(err, tasks.ErrInvalidPayload), errors.Is(err, tasks.ErrUnsupportedVersion))

	_, err = tasks.DecodePayload([]byte(`{"v":1,"acount_id":"support"}`))
	fmt.Println(err)
	// Output:
	// invalid payload: unsupported payload version 2 (this build reads version 1)
	// true true
	// invalid payload: json: unknown field "acount_id"
}

func ExamplePayload_BuildMIME() {
	p := &tasks.Payload{
		Version:   tasks.PayloadVersion,
		MessageID: "<i2jt6xhedjzpoc3n6y4e25zzcy@example.com>",
		Date:      time.Date(2024, 3, 1, 12, 30, 0, 0, time.UTC),
		Email: tasks.Email{
			AccountID: "support",
			From:      "Jörg <support@example.com>",
			To:        []string{"alice@example.org"},
			Bcc:       []string{"audit@example.com"},
			Subject:   "Grüße",
			Text:      "Bonjour, ça va ?\n",
			Headers:   []tasks.Header{{Name: "X-Order", Value: "42"}},
		},
	}
	raw, err := p.BuildMIME()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(strings.ReplaceAll(string(raw), "\r\n", "\n"))
	// Output:
	// Date: Fri, 01 Mar 2024 12:30:00 +0000
	// From: =?utf-8?q?J=C3=B6rg?= <support@example.com>
	// To: alice@example.org
	// Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=
	// Message-ID: <i2jt6xhedjzpoc3n6y4e25zzcy@example.com>
	// MIME-Version: 1.0
	// X-Order: 42
	// Content-Type: text/plain; charset=utf-8
	// Content-Transfer-Encoding: quoted-printable
	//
	// Bonjour, =C3=A7a va ?
}

func ExampleClient_Enqueue() {
	c := tasks.NewClient(asynq.RedisClientOpt{Addr: "127.0.0.1:6379"})
	defer c.Close()

	res, err := c.Enqueue(context.Background(), &tasks.Email{
		AccountID: "support",
		From:      "Support <support@example.com>",
		To:        []string{"alice@example.org"},
		Subject:   "Your ticket",
		Text:      "Hello Alice",
	}, tasks.IdempotencyKey("ticket-42-reply-1"), tasks.ProcessIn(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	if res.Duplicate {
		fmt.Println("already queued as", res.TaskID)
	}
	fmt.Println("queued", res.MessageID)
}
