// Command sandbox runs smtpoauthtest, sendq's in-process OAuth2 provider and
// XOAUTH2 SMTP server, as a standalone process: for the demo, for
// docker-compose, and for trying a worker without a real mailbox.
//
// Usage:
//
//	sandbox -dir ./sandbox-data [-flavor google|microsoft] [-token-lifetime 1h] [-rotate]
//	sandbox -dir /shared -listen 0.0.0.0 -public-host sandbox -smtp-port 2587 -http-port 8089
//	sandbox -ready /shared      # health check for containers
//
// At start it writes into -dir the CA certificate the worker must trust
// (ca.pem), one secret file per secret, and an accounts file
// (accounts.yaml) with two accounts: "demo", a delegated mailbox with a
// refresh token, and "demo-app", an app-only mailbox with client
// credentials. It then prints "ready DIR" on standard output, logs what it
// receives on standard error, and runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

type options struct {
	ready         string // -ready DIR: only report whether DIR holds a finished sandbox
	listen        string
	publicHost    string
	httpPort      int
	smtpPort      int
	smtpsPort     int
	dir           string
	flavor        smtpoauthtest.Flavor
	tokenLifetime time.Duration
	rotate        bool
	logFormat     string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var flavor string
	fs.StringVar(&o.dir, "dir", "sandbox-data", "directory for the accounts file, secrets and CA certificate")
	fs.StringVar(&flavor, "flavor", "google", "whose wire behaviour to imitate: google or microsoft")
	fs.DurationVar(&o.tokenLifetime, "token-lifetime", time.Hour, "lifetime of issued access tokens")
	fs.BoolVar(&o.rotate, "rotate", false, "rotate refresh tokens on every refresh, as Microsoft does")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.listen, "listen", "127.0.0.1", "address to listen on (0.0.0.0 in a container)")
	fs.StringVar(&o.publicHost, "public-host", "", "host name workers reach the sandbox by, written to the accounts file and covered by the certificate (default: the -listen address)")
	fs.IntVar(&o.httpPort, "http-port", 0, "port of the OAuth2 token endpoint (default: any free port)")
	fs.IntVar(&o.smtpPort, "smtp-port", 0, "port of the STARTTLS submission listener (default: any free port)")
	fs.IntVar(&o.smtpsPort, "smtps-port", 0, "port of the implicit-TLS listener (default: any free port)")
	fs.StringVar(&o.ready, "ready", "", "health check: exit 0 if DIR holds a started sandbox's accounts file, 1 otherwise")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch f := smtpoauthtest.Flavor(flavor); f {
	case smtpoauthtest.FlavorGoogle, smtpoauthtest.FlavorMicrosoft:
		o.flavor = f
	default:
		return o, fmt.Errorf("-flavor %q: want google or microsoft", flavor)
	}
	if o.tokenLifetime < time.Second {
		return o, fmt.Errorf("-token-lifetime %s: want at least 1s", o.tokenLifetime)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return o, fmt.Errorf("-log-format %q: want text or json", o.logFormat)
	}
	if o.publicHost == "" {
		o.publicHost = o.listen
		if o.listen == "0.0.0.0" || o.listen == "::" {
			o.publicHost = "localhost"
		}
	}
	for name, p := range map[string]int{"-http-port": o.httpPort, "-smtp-port": o.smtpPort, "-smtps-port": o.smtpsPort} {
		if p < 0 || p > 65535 {
			return o, fmt.Errorf("%s %d: not a port", name, p)
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.ready != "" {
		if _, err := os.Stat(filepath.Join(o.ready, "accounts.yaml")); err != nil {
			return fmt.Errorf("not ready: %w", err)
		}
		return nil
	}
	var logger *slog.Logger
	if o.logFormat == "json" {
		logger = slog.New(slog.NewJSONHandler(stderr, nil))
	} else {
		logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	srv, err := smtpoauthtest.Start(smtpoauthtest.Config{
		Flavor:              o.flavor,
		AccessTokenLifetime: o.tokenLifetime,
		RotateRefreshTokens: o.rotate,
		Logger:              logger,
		Hostname:            o.publicHost,
		ListenHost:          o.listen,
		HTTPPort:            o.httpPort,
		SMTPPort:            o.smtpPort,
		SMTPSPort:           o.smtpsPort,
		HTTPS:               true,
	})
	if err != nil {
		return err
	}
	defer srv.Close()

	if err := writeAccounts(o.dir, o.publicHost, srv); err != nil {
		return err
	}
	logger.Info("sandbox ready", "dir", o.dir, "token_url", srv.TokenURL, "smtp", srv.SMTPAddr, "smtps", srv.SMTPSAddr, "flavor", string(o.flavor))
	fmt.Fprintf(stdout, "ready %s smtp=%s token_url=%s\n", o.dir, srv.SMTPAddr, srv.TokenURL)

	<-ctx.Done()
	st := srv.Stats()
	logger.Info("sandbox stopping", "messages", st.Messages, "logins", st.Logins, "failed_logins", st.FailedLogins, "token_grants", st.TokenGrantsTotal)
	return nil
}

// The sandbox's accounts, written to the accounts file.
const (
	delegatedClientID = "sandbox-delegated-client"
	appClientID       = "sandbox-app-client"
	delegatedMailbox  = "demo@sandbox.test"
	appMailbox        = "app@sandbox.test"
)

// writeAccounts registers the sandbox's OAuth clients and writes the files a
// worker needs: ca.pem, the secrets, and accounts.yaml, the last one
// atomically so that its presence means the rest is there.
func writeAccounts(dir, publicHost string, srv *smtpoauthtest.Server) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	delegatedSecret, appSecret := randomSecret(), randomSecret()
	srv.AddClient(delegatedClientID, delegatedSecret)
	srv.AddClient(appClientID, appSecret)
	srv.SetClientMailboxes(appClientID, appMailbox)
	refresh := srv.NewRefreshToken(delegatedClientID, delegatedMailbox)

	files := map[string][]byte{
		"ca.pem":                 srv.CACertPEM,
		"demo-client-secret":     []byte(delegatedSecret),
		"demo-refresh-token":     []byte(refresh),
		"demo-app-client-secret": []byte(appSecret),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	_, port := splitHostPort(srv.SMTPAddr)
	_, httpPort := splitHostPort(strings.TrimPrefix(srv.URL, "https://"))
	host := publicHost
	tokenURL := fmt.Sprintf("https://%s/token", net.JoinHostPort(publicHost, strconv.Itoa(httpPort)))
	yaml := fmt.Sprintf(`# Written by the sendq sandbox. Secrets are in the files this names.
accounts:
  - id: demo
    provider: generic
    username: %[1]s
    smtp:
      host: %[3]s
      port: %[4]d
      tls: starttls
      ca_file: ca.pem
    oauth:
      grant: refresh_token
      client_id: %[5]s
      client_secret_file: demo-client-secret
      refresh_token_file: demo-refresh-token
      token_url: %[7]s
      scopes: ["https://mail.google.com/"]
  - id: demo-app
    provider: generic
    username: %[2]s
    smtp:
      host: %[3]s
      port: %[4]d
      tls: starttls
      ca_file: ca.pem
    oauth:
      grant: client_credentials
      client_id: %[6]s
      client_secret_file: demo-app-client-secret
      token_url: %[7]s
      scopes: ["https://outlook.office365.com/.default"]
`, delegatedMailbox, appMailbox, host, port, delegatedClientID, appClientID, tokenURL)
	tmp := filepath.Join(dir, ".accounts.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(yaml), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "accounts.yaml"))
}

func splitHostPort(addr string) (string, int) {
	host, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	return host, port
}
