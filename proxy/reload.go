package proxy

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ReloadOnSIGHUP reloads every reloader each time the process gets SIGHUP, until ctx ends. It is
// listening for the signal when it returns. A reload that fails keeps the old certificate and is
// logged with the file at fault; the others still reload.
func ReloadOnSIGHUP(ctx context.Context, log zerolog.Logger, reloaders ...*CertReloader) {
	OnSIGHUP(ctx, func() { ReloadAll(log, reloaders...) })
}

// OnSIGHUP calls fn each time the process gets SIGHUP, one call at a time, until ctx ends. It is
// listening for the signal when it returns.
func OnSIGHUP(ctx context.Context, fn func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				fn()
			}
		}
	}()
}

// ReloadAll reloads each reloader and logs the outcome; it returns how many failed.
func ReloadAll(log zerolog.Logger, reloaders ...*CertReloader) int {
	if len(reloaders) == 0 {
		log.Info().Msg("SIGHUP: no TLS certificates configured, nothing to reload")
		return 0
	}
	failed := 0
	for _, r := range reloaders {
		f := r.Files()
		rlog := log.With().Str("cert_file", f.CertFile).Str("ca_file", f.CAFile).Logger()
		if r.Front != "" {
			rlog = rlog.With().Str("front", r.Front).Logger()
		}
		if r.Owner != "" {
			rlog = rlog.With().Str("for", r.Owner).Logger()
		}
		if err := r.Reload(); err != nil {
			failed++
			rlog.Error().Err(err).Msg("TLS reload failed; the previous certificate stays in use")
			continue
		}
		ev := rlog.Info()
		problem := r.Problem(time.Now())
		if problem != "" {
			ev = rlog.Warn().Str("problem", problem)
		}
		if leaf := r.Leaf(); leaf != nil {
			ev = ev.Str("subject", leaf.Subject.String()).Time("not_after", leaf.NotAfter)
		}
		ev.Msg("TLS certificates reloaded")
	}
	return failed
}
