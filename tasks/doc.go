// Package tasks is the queue contract of sendq: the asynq task type, its
// versioned JSON payload, validation, MIME construction and the producer API.
//
// # A tour
//
// A producer fills an [Email] and hands it to a [Client]:
//
//	c := tasks.NewClient(asynq.RedisClientOpt{Addr: "127.0.0.1:6379"})
//	defer c.Close()
//	res, err := c.Enqueue(ctx, &tasks.Email{
//		AccountID: "support",
//		From:      "Support <support@example.com>",
//		To:        []string{"alice@example.org"},
//		Subject:   "Your ticket",
//		Text:      "Hello Alice",
//	}, tasks.IdempotencyKey("ticket-42-reply-1"))
//
// Enqueue validates the email before anything touches Redis (see
// [Email.Validate]; errors are [*ValidationError] values matching
// [ErrInvalidEmail]), assigns the Message-ID and Date once, so they never
// change across retries, and enqueues a task of type [TypeSendEmail] on
// [DefaultQueue]. With an [IdempotencyKey] the asynq task ID and the
// Message-ID are derived from the account and the key, so enqueueing the
// same key twice yields one email: the second call reports
// [Enqueued.Duplicate].
//
// The worker side decodes the task with [DecodePayload], which is strict:
// an unknown payload version, an unknown field or an invalid email is an
// error matching [ErrInvalidPayload], a permanent failure that retrying
// cannot fix. [Payload.BuildMIME] renders the RFC 5322 message (CRLF line
// endings, RFC 2047 headers, quoted-printable text, base64 attachments) and
// [Email.Envelope] gives the SMTP envelope; [Payload.Message] combines both
// into a [smtpoauth.Message].
//
// [Handler] delivers the tasks. With [HandlerConfig.LimitsFunc] it enforces
// each account's [AccountLimits] together with every other worker on the
// same Redis: a session slot per submission, and messages and recipients per
// minute and per day; a task over a limit is deferred without spending a
// retry.
//
// # Wire format
//
// The payload is JSON with snake_case names; "v" holds [PayloadVersion]. A
// payload written by a newer producer with a version this build does not know
// is rejected with [ErrUnsupportedVersion] rather than misread. Attachment
// data is base64 in JSON (a []byte).
package tasks
