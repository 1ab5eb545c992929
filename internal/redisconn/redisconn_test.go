package redisconn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFromEnv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		env      map[string]string
		wantDesc string
		check    func(asynq.RedisConnOpt) bool
		wantErr  string
	}{
		{name: "DefaultIsLocalDBZero", env: nil, wantDesc: "redis://127.0.0.1:6379/0",
			check: func(o asynq.RedisConnOpt) bool {
				c := o.(asynq.RedisClientOpt)
				return c.Addr == "127.0.0.1:6379" && c.DB == 0
			}},
		{name: "ACLUserPasswordAndDB", env: map[string]string{"REDIS_URL": "redis://mailer:s3cret@redis.internal:6380/4"},
			wantDesc: "redis://redis.internal:6380/4",
			check: func(o asynq.RedisConnOpt) bool {
				c := o.(asynq.RedisClientOpt)
				return c.Username == "mailer" && c.Password == "s3cret" && c.DB == 4 && c.TLSConfig == nil
			}},
		{name: "TLS", env: map[string]string{"REDIS_URL": "rediss://redis.internal:6380/1"}, wantDesc: "rediss://redis.internal:6380/1",
			check: func(o asynq.RedisConnOpt) bool {
				c := o.(asynq.RedisClientOpt)
				return c.TLSConfig != nil && c.TLSConfig.ServerName == "redis.internal"
			}},
		{name: "Sentinel", env: map[string]string{"REDIS_URL": "redis://:pw@ignored:1/2", "REDIS_SENTINEL_ADDRS": "s1:26379, s2:26379",
			"REDIS_SENTINEL_MASTER": "mail", "REDIS_SENTINEL_PASSWORD": "spw"},
			wantDesc: `sentinel s1:26379,s2:26379 master "mail" db 2`,
			check: func(o asynq.RedisConnOpt) bool {
				f := o.(asynq.RedisFailoverClientOpt)
				return f.MasterName == "mail" && len(f.SentinelAddrs) == 2 && f.SentinelPassword == "spw" && f.Password == "pw" && f.DB == 2
			}},
		{name: "CAFileWithoutTLS", env: map[string]string{"REDIS_CA_FILE": "/ca.pem"}, wantErr: "REDIS_CA_FILE is set but REDIS_URL does not use TLS"},
		{name: "BadURLDoesNotEchoIt", env: map[string]string{"REDIS_URL": "http://user:topsecret@host"}, wantErr: "REDIS_URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opt, desc, err := FromEnv(envOf(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "topsecret") {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if desc != tc.wantDesc {
				t.Errorf("description %q, want %q", desc, tc.wantDesc)
			}
			if strings.Contains(desc, "s3cret") || strings.Contains(desc, "pw") {
				t.Errorf("description %q shows a password", desc)
			}
			if !tc.check(opt) {
				t.Errorf("option %+v", opt)
			}
		})
	}
}

// roundTrip enqueues a task through opt and reads it back with an Inspector.
func roundTrip(t *testing.T, opt asynq.RedisConnOpt) {
	t.Helper()
	c := asynq.NewClient(opt)
	defer c.Close()
	info, err := c.Enqueue(asynq.NewTask("probe", []byte("x")), asynq.Queue("probe"))
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	if _, err := insp.GetTaskInfo("probe", info.ID); err != nil {
		t.Fatalf("read back: %v", err)
	}
	rdb, err := Client(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("ledger client: %v", err)
	}
}

func TestTLSWithPrivateCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caFile, certFile, keyFile := writeCerts(t, dir)
	plain, tlsPort := freePort(t), freePort(t)
	redistest.StartWith(t, fmt.Sprintf("127.0.0.1:%d", plain), "--port", fmt.Sprint(plain), "--bind", "127.0.0.1", "--save", "", "--dir", dir,
		"--tls-port", fmt.Sprint(tlsPort), "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile, "--tls-auth-clients", "no")
	url := fmt.Sprintf("rediss://localhost:%d/0", tlsPort)

	opt, _, err := FromEnv(envOf(map[string]string{"REDIS_URL": url, "REDIS_CA_FILE": caFile}))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, opt)

	untrusting, _, _ := FromEnv(envOf(map[string]string{"REDIS_URL": url}))
	rdb, _ := Client(untrusting)
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err == nil {
		t.Error("TLS connection succeeded without trusting the server's CA")
	}
}

func TestSentinel(t *testing.T) {
	t.Parallel()
	master := redistest.StartServer(t)
	sport := freePort(t)
	conf := filepath.Join(t.TempDir(), "sentinel.conf")
	_, mport, _ := net.SplitHostPort(master.Addr)
	os.WriteFile(conf, []byte(fmt.Sprintf("port %d\nbind 127.0.0.1\nsentinel monitor mail 127.0.0.1 %s 1\n", sport, mport)), 0o600)
	redistest.StartWith(t, fmt.Sprintf("127.0.0.1:%d", sport), conf, "--sentinel")

	opt, _, err := FromEnv(envOf(map[string]string{"REDIS_SENTINEL_ADDRS": fmt.Sprintf("127.0.0.1:%d", sport), "REDIS_SENTINEL_MASTER": "mail"}))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, opt)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeCerts writes a CA and a server certificate for localhost.
func writeCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return caFile, certFile, keyFile
}
