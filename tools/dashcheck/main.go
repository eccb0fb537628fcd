// dashcheck validates Grafana dashboard JSON against Grafana's dashboard schema, as the types
// the Grafana Foundation SDK generates from it: a strict decode (a missing required field, a
// field of the wrong type or a field the schema does not know fails), each panel's options
// and field config decoded by its panel plugin's schema, each Prometheus query by the
// Prometheus query schema, then the schema's own constraints (Validate).
//
// On success it prints one line per Prometheus query, "<panel title>\t<expr>", for the caller
// to check the PromQL (promtool) and the metric names (a real scrape).
//
//	dashcheck DASHBOARD.json...
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashcheck DASHBOARD.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var d dashboard.Dashboard
	if err := failure(d.UnmarshalJSONStrict(raw)); err != nil {
		return fmt.Errorf("does not match the dashboard schema: %w", err)
	}
	if err := failure(d.Validate()); err != nil {
		return fmt.Errorf("breaks a constraint of the dashboard schema: %w", err)
	}
	// The panels' queries are read from the JSON again: the SDK's generated decoders return an
	// empty error list as a non-nil error, so a decoded panel (and its queries) is dropped from
	// the typed result even though every error in it has been reported above.
	var generic struct {
		Panels []rawPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &generic); err != nil {
		return err
	}
	if len(generic.Panels) == 0 {
		return fmt.Errorf("has no panels")
	}
	for _, p := range generic.Panels {
		for _, panel := range append([]rawPanel{p}, p.Panels...) {
			if panel.Type == "row" {
				continue
			}
			if err := queries(panel); err != nil {
				return err
			}
		}
	}
	return nil
}

type rawPanel struct {
	Type    string            `json:"type"`
	Title   string            `json:"title"`
	Targets []json.RawMessage `json:"targets"`
	Panels  []rawPanel        `json:"panels"`
}

// failure is err unless it is an empty list of build errors, which the SDK's generated code
// returns as a non-nil error value when nothing failed.
func failure(err error) error {
	var errs cog.BuildErrors
	if errors.As(err, &errs) && len(errs) == 0 {
		return nil
	}
	return err
}

func queries(panel rawPanel) error {
	if len(panel.Targets) == 0 {
		return fmt.Errorf("panel %q has no query", panel.Title)
	}
	for i, raw := range panel.Targets {
		var q prometheus.Dataquery
		if err := failure(q.UnmarshalJSONStrict(raw)); err != nil {
			return fmt.Errorf("panel %q, query %d does not match the Prometheus query schema: %w", panel.Title, i, err)
		}
		if q.Datasource == nil || q.Datasource.Type == nil || *q.Datasource.Type != "prometheus" {
			return fmt.Errorf("panel %q, query %d does not name a Prometheus data source", panel.Title, i)
		}
		if q.Expr == "" {
			return fmt.Errorf("panel %q, query %d has an empty expression", panel.Title, i)
		}
		fmt.Printf("%s\t%s\n", panel.Title, q.Expr)
	}
	return nil
}
