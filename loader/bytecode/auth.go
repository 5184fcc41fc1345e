package bytecode

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// dockerAuth is one entry of a docker config.json "auths" map. Only inline
// credentials are read: a node daemon cannot run credential helpers.
type dockerAuth struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// dockerConfig is the parsed content of a .dockerconfigjson (or of the older
// .dockercfg, which is the bare "auths" map).
type dockerConfig map[string]dockerAuth

// parseDockerConfig reads credentials. Its errors never quote the input:
// it holds secrets.
func parseDockerConfig(raw []byte) (dockerConfig, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, errors.New("not a JSON object")
	}
	var auths map[string]dockerAuth
	if a, ok := top["auths"]; ok {
		if err := json.Unmarshal(a, &auths); err != nil {
			return nil, errors.New(`"auths" is not an object of registry to credentials`)
		}
	} else if err := json.Unmarshal(raw, &auths); err != nil {
		return nil, errors.New(`no "auths" object`)
	}
	return auths, nil
}

// lookup returns the credentials for repo, or nil. Keys may be a host
// ("registry.example:5000"), a URL ("https://registry.example/v1/"), a host
// with a repository prefix ("registry.example/team"), or a wildcard host
// ("*.registry.example"), as kubelet accepts; the most specific key wins.
func (c dockerConfig) lookup(repo name.Repository) (*authn.AuthConfig, error) {
	host := strings.ToLower(repo.RegistryStr())
	best, bestScore := "", -1
	for key := range c {
		if score, ok := matchAuthKey(key, host, repo.RepositoryStr()); ok && (score > bestScore || score == bestScore && key < best) {
			best, bestScore = key, score
		}
	}
	if bestScore < 0 {
		return nil, nil
	}
	a := c[best]
	cfg := &authn.AuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		IdentityToken: a.IdentityToken,
		RegistryToken: a.RegistryToken,
	}
	if a.Auth != "" {
		dec, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return nil, fmt.Errorf("the \"auth\" of %s is not base64", best)
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return nil, fmt.Errorf("the \"auth\" of %s is not base64(user:password)", best)
		}
		cfg.Username, cfg.Password = user, pass
	}
	if *cfg == (authn.AuthConfig{}) {
		return nil, nil
	}
	return cfg, nil
}

// matchAuthKey reports whether a config key covers host and repository,
// and how specifically (higher is more specific).
func matchAuthKey(key, host, repository string) (int, bool) {
	k := key
	if strings.Contains(k, "://") {
		u, err := url.Parse(k)
		if err != nil {
			return 0, false
		}
		k = u.Host + u.Path
	}
	kh, kp, _ := strings.Cut(strings.TrimSuffix(k, "/"), "/")
	kh = normalizeRegistryHost(strings.ToLower(kh))
	// Docker Hub keys carry an API version path, not a repository prefix.
	if kp == "v1" || kp == "v2" {
		kp = ""
	}
	exact := kh == normalizeRegistryHost(host)
	if !exact && !hostGlobMatch(kh, normalizeRegistryHost(host)) {
		return 0, false
	}
	if kp != "" && repository != kp && !strings.HasPrefix(repository, kp+"/") {
		return 0, false
	}
	score := 2 * len(kp)
	if exact {
		score++
	}
	return score, true
}

// normalizeRegistryHost maps a registry's aliases to the name references
// use (go-containerregistry knows the default registry's short alias).
func normalizeRegistryHost(h string) string {
	if strings.Contains(h, "*") {
		return h
	}
	if reg, err := name.NewRegistry(h); err == nil {
		return reg.RegistryStr()
	}
	return h
}

// hostGlobMatch matches "*.registry.example" style keys label by label; the
// ports, if any, must be equal.
func hostGlobMatch(pattern, host string) bool {
	if !strings.Contains(pattern, "*") {
		return false
	}
	pp, hp := strings.Split(pattern, "."), strings.Split(host, ".")
	if len(pp) != len(hp) {
		return false
	}
	for i := range pp {
		if ok, err := path.Match(pp[i], hp[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

// credentials picks the credentials for repo: the request's pull secret,
// then the node-wide docker config, then none. The key identifies them in
// memory only (to keep pulls with different credentials apart); it is a
// hash and never leaves the process.
func (r *Registry) credentials(ref string, secret []byte, repo name.Repository) (authn.Authenticator, string, error) {
	if len(secret) > 0 {
		cfg, err := parseDockerConfig(secret)
		if err == nil {
			var auth *authn.AuthConfig
			if auth, err = cfg.lookup(repo); err == nil && auth != nil {
				return authn.FromConfig(*auth), credKey(auth), nil
			}
		}
		if err != nil {
			return nil, "", fault.Errorf(fault.Invalid, "image %q: the pull secret is not a valid .dockerconfigjson (%v): fix the kubernetes.io/dockerconfigjson Secret named by nodePublishSecretRef", ref, err)
		}
	}
	if r.opts.DockerConfigPath != "" {
		raw, err := os.ReadFile(r.opts.DockerConfigPath)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, "", fault.Errorf(fault.Precondition, "image %q: reading the node's registry credentials %s: %v", ref, r.opts.DockerConfigPath, err)
		default:
			cfg, err := parseDockerConfig(raw)
			var auth *authn.AuthConfig
			if err == nil {
				auth, err = cfg.lookup(repo)
			}
			if err != nil {
				return nil, "", fault.Errorf(fault.Precondition, "image %q: the node's registry credentials %s are malformed (%v): fix that file", ref, r.opts.DockerConfigPath, err)
			}
			if auth != nil {
				return authn.FromConfig(*auth), credKey(auth), nil
			}
		}
	}
	return authn.Anonymous, "", nil
}

func credKey(a *authn.AuthConfig) string {
	b, _ := json.Marshal(a)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
