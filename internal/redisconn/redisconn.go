// Package redisconn turns sendq's Redis environment variables into an asynq
// connection option, the one place the commands read them:
//
//	REDIS_URL               redis://[user:password@]host:port/db, or rediss:// for TLS
//	                        (default redis://127.0.0.1:6379/0)
//	REDIS_CA_FILE           PEM file of CA certificates trusted for rediss://
//	                        (besides the system roots)
//	REDIS_SENTINEL_ADDRS    host:port,host:port: use Redis Sentinel; REDIS_URL then
//	                        gives the master's credentials, database and TLS
//	REDIS_SENTINEL_MASTER   the monitored master's name (default "mymaster")
//	REDIS_SENTINEL_PASSWORD the sentinels' own password, if any
//
// Redis Cluster is not supported: asynq's Lua scripts and sendq's ledger keep
// each queue's and each account's keys in one hash slot, but neither is
// tested against a cluster.
package redisconn

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// DefaultURL is the Redis used when REDIS_URL is not set.
const DefaultURL = "redis://127.0.0.1:6379/0"

// DefaultSentinelMaster is the master name used when REDIS_SENTINEL_ADDRS is
// set and REDIS_SENTINEL_MASTER is not.
const DefaultSentinelMaster = "mymaster"

// FromEnv reads the variables listed in the package documentation through
// getenv. It returns the connection option and a description fit for logs
// (no password).
func FromEnv(getenv func(string) string) (asynq.RedisConnOpt, string, error) {
	raw := getenv("REDIS_URL")
	if raw == "" {
		raw = DefaultURL
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, "", fmt.Errorf("REDIS_URL: %w", errors.New(strings.ReplaceAll(err.Error(), raw, "…")))
	}
	if opt.TLSConfig != nil {
		if ca := getenv("REDIS_CA_FILE"); ca != "" {
			pool, err := certPool(ca)
			if err != nil {
				return nil, "", fmt.Errorf("REDIS_CA_FILE: %w", err)
			}
			opt.TLSConfig.RootCAs = pool
		}
	} else if getenv("REDIS_CA_FILE") != "" {
		return nil, "", errors.New("REDIS_CA_FILE is set but REDIS_URL does not use TLS (rediss://)")
	}
	scheme := "redis"
	if opt.TLSConfig != nil {
		scheme = "rediss"
	}
	if sentinels := getenv("REDIS_SENTINEL_ADDRS"); sentinels != "" {
		master := getenv("REDIS_SENTINEL_MASTER")
		if master == "" {
			master = DefaultSentinelMaster
		}
		var addrs []string
		for _, a := range strings.Split(sentinels, ",") {
			if a = strings.TrimSpace(a); a != "" {
				addrs = append(addrs, a)
			}
		}
		fo := asynq.RedisFailoverClientOpt{
			MasterName:       master,
			SentinelAddrs:    addrs,
			SentinelPassword: getenv("REDIS_SENTINEL_PASSWORD"),
			Username:         opt.Username,
			Password:         opt.Password,
			DB:               opt.DB,
			TLSConfig:        opt.TLSConfig,
		}
		return fo, fmt.Sprintf("sentinel %s master %q db %d", strings.Join(addrs, ","), master, opt.DB), nil
	}
	co := asynq.RedisClientOpt{
		Addr:      opt.Addr,
		Username:  opt.Username,
		Password:  opt.Password,
		DB:        opt.DB,
		TLSConfig: opt.TLSConfig,
	}
	return co, fmt.Sprintf("%s://%s/%d", scheme, opt.Addr, opt.DB), nil
}

func certPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// Client returns a go-redis client for opt, for the state sendq keeps beside
// asynq's.
func Client(opt asynq.RedisConnOpt) (redis.UniversalClient, error) {
	c, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("redis option does not make a go-redis v9 client")
	}
	return c, nil
}
