// helm-render renders a Helm chart the way `helm template` does, for tests on machines
// where no helm binary can be installed.
//
// Helm's engine is Go's text/template with the sprig function library, plus a few
// functions of its own (include, tpl, required, toYaml, ...). This program uses the same
// two libraries (from Debian's golang-go and golang-github-masterminds-sprig-dev) and
// re-implements Helm's own functions and built-in objects as Helm documents them:
// values are read as YAML and converted through JSON (so numbers are float64, as in
// Helm), toYaml goes through JSON into yaml.v2 (as sigs.k8s.io/yaml does), missing keys
// render as empty strings, templates whose name starts with "_" are partials, and
// NOTES.txt is not rendered.
//
// Usage: helm-render [-f values.yaml]... [--set a.b=c]... [--api-versions g/v]...
//
//	[--name RELEASE] [--namespace NS] [--kube-version 1.30.0] CHART_DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// APIVersions answers .Capabilities.APIVersions.Has like Helm's VersionSet.
type APIVersions []string

func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

type KubeVersion struct{ Version, Major, Minor, GitVersion string }

type Capabilities struct {
	APIVersions APIVersions
	KubeVersion KubeVersion
}

// Files gives templates read access to the chart's non-template files.
type Files struct{ root string }

func (f Files) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.root, name))
	if err != nil {
		return ""
	}
	return string(b)
}

func main() {
	var valueFiles, sets, apiVersions multi
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kube := flag.String("kube-version", "1.30.0", "Kubernetes version for .Capabilities")
	flag.Var(&valueFiles, "f", "values file (repeatable)")
	flag.Var(&sets, "set", "key=value override (repeatable)")
	flag.Var(&apiVersions, "api-versions", "API version present in the cluster (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helm-render [flags] CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), valueFiles, sets, apiVersions, *name, *namespace, *kube)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helm-render:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func render(chartDir string, valueFiles, sets, apiVersions []string, name, ns, kube string) (string, error) {
	chartMeta, err := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	values, err := readYAML(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, f := range valueFiles {
		extra, err := readYAML(f)
		if err != nil {
			return "", err
		}
		values = coalesce(values, extra)
	}
	for _, s := range sets {
		if err := setValue(values, s); err != nil {
			return "", err
		}
	}
	chartName, _ := chartMeta["name"].(string)
	parts := strings.SplitN(kube, ".", 3)
	for len(parts) < 2 {
		parts = append(parts, "0")
	}
	versions := APIVersions{"v1", "apps/v1", "policy/v1", "batch/v1", "autoscaling/v2"}
	top := map[string]interface{}{
		"Values": values,
		"Chart": map[string]interface{}{
			"Name":        chartMeta["name"],
			"Version":     chartMeta["version"],
			"AppVersion":  chartMeta["appVersion"],
			"Description": chartMeta["description"],
		},
		"Release": map[string]interface{}{
			"Name": name, "Namespace": ns, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": Capabilities{
			APIVersions: append(versions, apiVersions...),
			KubeVersion: KubeVersion{"v" + kube, parts[0], parts[1], "v" + kube},
		},
		"Files": Files{root: chartDir},
	}

	root := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // Helm removes these two
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["fromJson"] = fromJSON
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["lookup"] = func(...interface{}) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil // as in `helm template`: no cluster
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return strings.ReplaceAll(buf.String(), "<no value>", ""), err
	}
	root.Funcs(funcs)

	var names []string
	tplDir := filepath.Join(chartDir, "templates")
	err = filepath.Walk(tplDir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, path)
		tname := chartName + "/" + filepath.ToSlash(rel)
		body, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := root.New(tname).Parse(string(body)); err != nil {
			return err
		}
		names = append(names, tname)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)

	var out strings.Builder
	for _, tname := range names {
		base := filepath.Base(tname)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{
			"Name": tname, "BasePath": chartName + "/templates",
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, tname, data); err != nil {
			return "", err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", tname, strings.TrimRight(text, "\n"))
	}
	return out.String(), nil
}

// readYAML reads YAML the way Helm does: through JSON, so maps have string keys and
// numbers are float64.
func readYAML(path string) (map[string]interface{}, error) {
	body, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v, err := fromYAMLStrict(string(body))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if v == nil {
		return map[string]interface{}{}, nil
	}
	return v, nil
}

func fromYAMLStrict(s string) (map[string]interface{}, error) {
	var raw interface{}
	if err := yaml.Unmarshal([]byte(s), &raw); err != nil {
		return nil, err
	}
	b, err := json.Marshal(jsonable(raw))
	if err != nil {
		return nil, err
	}
	var out map[string]interface{}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func jsonable(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, val := range t {
			m[fmt.Sprint(k)] = jsonable(val)
		}
		return m
	case []interface{}:
		for i := range t {
			t[i] = jsonable(t[i])
		}
		return t
	}
	return v
}

// coalesce merges override into base, recursively for maps (as Helm merges values files).
func coalesce(base, override map[string]interface{}) map[string]interface{} {
	for k, v := range override {
		bm, bok := base[k].(map[string]interface{})
		om, ook := v.(map[string]interface{})
		if bok && ook {
			base[k] = coalesce(bm, om)
		} else {
			base[k] = v
		}
	}
	return base
}

// setValue applies a --set a.b.c=value (value typed as Helm's --set does: bool, number,
// null or string).
func setValue(values map[string]interface{}, s string) error {
	eq := strings.Index(s, "=")
	if eq < 0 {
		return fmt.Errorf("--set %q: want key=value", s)
	}
	path, raw := strings.Split(s[:eq], "."), s[eq+1:]
	var val interface{} = raw
	switch {
	case raw == "true" || raw == "false":
		val = raw == "true"
	case raw == "null":
		val = nil
	default:
		if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
			val = float64(n)
		}
	}
	m := values
	for _, key := range path[:len(path)-1] {
		next, ok := m[key].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[key] = next
		}
		m = next
	}
	m[path[len(path)-1]] = val
	return nil
}

func toYAML(v interface{}) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var generic interface{}
	if err := yaml.Unmarshal(b, &generic); err != nil {
		return ""
	}
	out, err := yaml.Marshal(generic)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m, err := fromYAMLStrict(s)
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	return m
}

func toJSON(v interface{}) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}
