# Cocoon default resource policy (id "resource-policy").
#
# Input: the verified attestation token claims (EAR). Data: {"plugin":
# "resource", "resource-path": [repo, type, tag], "query": {...}}.
# Releases a resource only when every appraisal in the token is affirming.
# deny_reasons is what `cocoon explain` shows; the guest only sees "denied".
package policy

import rego.v1

default allow := false

allow if {
	data.plugin == "resource"
	count(input.submods) > 0
	count(deny_reasons) == 0
}

# Fails closed: an appraisal without a status (or with one that is not a
# string) is not affirming.
deny_reasons contains msg if {
	some name, submod in input.submods
	not submod["ear.status"] == "affirming"
	msg := sprintf("appraisal %s is '%v', not 'affirming'", [name, object.get(submod, "ear.status", "missing")])
}

deny_reasons contains msg if {
	data.plugin != "resource"
	msg := sprintf("plugin '%s' is not released by this policy", [data.plugin])
}
