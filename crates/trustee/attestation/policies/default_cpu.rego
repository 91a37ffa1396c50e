# Cocoon default attestation policy (id "default_cpu").
#
# Input: the annotated evidence: claims under the TEE name (input.sample,
# input.tdx, ...), report_data, runtime_data_claims, init_data,
# init_data_claims. Reference values come from the RVPS through
# query_reference_value("<name>"), which is null when the name is not set.
#
# Output: trust_claims, a map from EAR trust-vector claim to value; and
# explain, a set of messages saying which claim failed which rule (shown by
# `cocoon explain`, never sent to the guest).
package policy

import rego.v1

default executables := 33

default hardware := 97

default configuration := 36

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
}

# ---- sample (development TEE) -------------------------------------------

executables := 3 if {
	input.sample.launch_digest in query_reference_value("launch_digest")
}

hardware := 2 if {
	input.sample.svn in query_reference_value("svn")
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

configuration := 2 if {
	input.sample
	input.sample.debug == false
}

explain contains msg if {
	input.sample
	not input.sample.launch_digest in query_reference_value("launch_digest")
	msg := sprintf("executables: claim sample.launch_digest=%v is not in reference value 'launch_digest'=%v", [input.sample.launch_digest, query_reference_value("launch_digest")])
}

explain contains msg if {
	input.sample
	not input.sample.svn in query_reference_value("svn")
	msg := sprintf("hardware: claim sample.svn=%v is not in reference value 'svn'=%v", [input.sample.svn, query_reference_value("svn")])
}

explain contains msg if {
	input.sample
	input.sample.platform_version.major != query_reference_value("major_version")
	msg := sprintf("hardware: claim sample.platform_version.major=%v differs from reference value 'major_version'=%v", [input.sample.platform_version.major, query_reference_value("major_version")])
}

explain contains msg if {
	input.sample
	not input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
	msg := sprintf("hardware: claim sample.platform_version.minor=%v is below reference value 'minimum_minor_version'=%v", [input.sample.platform_version.minor, query_reference_value("minimum_minor_version")])
}

explain contains "configuration: claim sample.debug is true" if {
	input.sample.debug == true
}

# ---- tpm -----------------------------------------------------------------
# The quote verified with an AK an admin registered: the hardware is trusted.
# Each PCR N that has a reference value "tpm_pcrN" (a list of hex digests)
# must equal one of them, and at least one such reference value must exist.

# The same PCR rules judge the vTPM of an Azure confidential VM, whose PCRs
# sit under az-snp-vtpm.tpm / az-tdx-vtpm.tpm.

hardware := 2 if input.tpm

vtpm_pcrs := input.tpm

vtpm_pcrs := input["az-snp-vtpm"].tpm

vtpm_pcrs := input["az-tdx-vtpm"].tpm

vtpm_name := "tpm" if input.tpm

vtpm_name := "az-snp-vtpm.tpm" if input["az-snp-vtpm"]

vtpm_name := "az-tdx-vtpm.tpm" if input["az-tdx-vtpm"]

tpm_pcr_checks[n] := {"claim": vtpm_pcrs[tpm_pcr_key(n)], "refs": refs} if {
	vtpm_pcrs
	some n in numbers.range(0, 23)
	refs := query_reference_value(sprintf("tpm_pcr%d", [n]))
	refs != null
}

# Claims are named pcr00 .. pcr23, reference values tpm_pcr0 .. tpm_pcr23.
tpm_pcr_key(n) := sprintf("pcr0%d", [n]) if n < 10

tpm_pcr_key(n) := sprintf("pcr%d", [n]) if n >= 10

tpm_pcr_failures contains n if {
	some n, c in tpm_pcr_checks
	not lower(c.claim) in {lower(r) | some r in c.refs}
}

tpm_pcrs_ok if {
	count(tpm_pcr_checks) > 0
	count(tpm_pcr_failures) == 0
}

executables := 3 if {
	vtpm_pcrs
	tpm_pcrs_ok
}

configuration := 2 if {
	input.tpm
	tpm_pcrs_ok
}

explain contains msg if {
	some n in tpm_pcr_failures
	c := tpm_pcr_checks[n]
	msg := sprintf("executables: claim %v.%v=%v is not in reference value 'tpm_pcr%d'=%v", [vtpm_name, tpm_pcr_key(n), c.claim, n, c.refs])
}

explain contains "executables: no PCR reference values are registered (names tpm_pcr0 .. tpm_pcr23): add them with `cocoon admin add-reference-value`" if {
	vtpm_pcrs
	count(tpm_pcr_checks) == 0
}

# ---- snp -----------------------------------------------------------------
# Reference values: "snp_launch_measurement" (hex launch digests), and
# optional minimum TCB levels "snp_min_tcb_bootloader", "snp_min_tcb_tee",
# "snp_min_tcb_snp", "snp_min_tcb_microcode" (one number each).
# The TCB and debug rules also judge the SNP report of an Azure vTPM VM
# (az-snp-vtpm), whose launch measurement is the paravisor's and whose
# executables are judged by PCRs (above).

executables := 3 if {
	input.snp.measurement in query_reference_value("snp_launch_measurement")
}

snp_claims := input.snp

snp_claims := input["az-snp-vtpm"]

snp_name := "snp" if input.snp

snp_name := "az-snp-vtpm" if input["az-snp-vtpm"]

hardware := 2 if {
	input.snp
	count(snp_tcb_below_minimum) == 0
}

# On Azure the SNP report is the paravisor's (HCL): any SNP guest at VMPL 0
# could produce one binding a key of its own, so the hardware claim also
# needs the HCL's launch measurement among "az_snp_hcl_measurement".
hardware := 2 if {
	input["az-snp-vtpm"]
	count(snp_tcb_below_minimum) == 0
	input["az-snp-vtpm"].measurement in query_reference_value("az_snp_hcl_measurement")
}

explain contains msg if {
	input["az-snp-vtpm"]
	not input["az-snp-vtpm"].measurement in query_reference_value("az_snp_hcl_measurement")
	msg := sprintf("hardware: claim az-snp-vtpm.measurement=%v is not in reference value 'az_snp_hcl_measurement'=%v (the Azure paravisor's launch measurement must be pinned)", [input["az-snp-vtpm"].measurement, query_reference_value("az_snp_hcl_measurement")])
}

configuration := 2 if {
	snp_claims
	snp_claims.policy_debug_allowed == false
}

snp_tcb_parts := ["bootloader", "tee", "snp", "microcode"]

# Fails closed: a minimum that is set but cannot be compared (not a list
# of one number, or no such claim) counts as not met.
snp_tcb_below_minimum contains part if {
	snp_claims
	some part in snp_tcb_parts
	refs := query_reference_value(sprintf("snp_min_tcb_%s", [part]))
	refs != null
	not snp_tcb_meets(part, refs)
}

snp_tcb_meets(part, refs) if {
	is_array(refs)
	count(refs) == 1
	to_number(snp_claims[sprintf("reported_tcb_%s", [part])]) >= to_number(refs[0])
}

explain contains msg if {
	input.snp
	not input.snp.measurement in query_reference_value("snp_launch_measurement")
	msg := sprintf("executables: claim snp.measurement=%v is not in reference value 'snp_launch_measurement'=%v", [input.snp.measurement, query_reference_value("snp_launch_measurement")])
}

explain contains msg if {
	some part in snp_tcb_below_minimum
	msg := sprintf("hardware: claim %s.reported_tcb_%s=%v is below (or cannot be compared with) reference value 'snp_min_tcb_%s'=%v", [snp_name, part, snp_claims[sprintf("reported_tcb_%s", [part])], part, query_reference_value(sprintf("snp_min_tcb_%s", [part]))])
}

explain contains msg if {
	snp_claims.policy_debug_allowed == true
	msg := sprintf("configuration: claim %s.policy_debug_allowed is true (the guest policy lets the host debug it)", [snp_name])
}

# ---- tdx -----------------------------------------------------------------
# Reference values: "tdx_mr_td" (hex MRTD list). Hardware is affirmed when
# the collateral says the TCB is up to date (tcb_status "unknown" without it).
# The hardware and debug rules also judge the TD quote of an Azure vTPM VM
# (az-tdx-vtpm), whose executables are judged by PCRs (above).

executables := 3 if {
	input.tdx.quote.body.mr_td in query_reference_value("tdx_mr_td")
}

hardware := 2 if {
	input.tdx.tcb_status == "UpToDate"
}

# As for SNP: the TD is the Azure paravisor's; its MRTD must be pinned in
# "az_tdx_hcl_mr_td".
hardware := 2 if {
	input["az-tdx-vtpm"].tcb_status == "UpToDate"
	input["az-tdx-vtpm"].quote.body.mr_td in query_reference_value("az_tdx_hcl_mr_td")
}

explain contains msg if {
	input["az-tdx-vtpm"]
	not input["az-tdx-vtpm"].quote.body.mr_td in query_reference_value("az_tdx_hcl_mr_td")
	msg := sprintf("hardware: claim az-tdx-vtpm.quote.body.mr_td=%v is not in reference value 'az_tdx_hcl_mr_td'=%v (the Azure paravisor's MRTD must be pinned)", [input["az-tdx-vtpm"].quote.body.mr_td, query_reference_value("az_tdx_hcl_mr_td")])
}

configuration := 2 if {
	input.tdx
	input.tdx.td_attributes.debug == false
}

configuration := 2 if {
	input["az-tdx-vtpm"].td_attributes.debug == false
}

explain contains msg if {
	input.tdx
	not input.tdx.quote.body.mr_td in query_reference_value("tdx_mr_td")
	msg := sprintf("executables: claim tdx.quote.body.mr_td=%v is not in reference value 'tdx_mr_td'=%v", [input.tdx.quote.body.mr_td, query_reference_value("tdx_mr_td")])
}

explain contains msg if {
	input.tdx
	input.tdx.tcb_status != "UpToDate"
	msg := sprintf("hardware: claim tdx.tcb_status=%v is not UpToDate (give the trustee DCAP collateral with --dcap-collateral, or update the platform)", [input.tdx.tcb_status])
}

explain contains "configuration: claim tdx.td_attributes.debug is true (a debug TD)" if {
	input.tdx.td_attributes.debug == true
}

explain contains "configuration: claim az-tdx-vtpm.td_attributes.debug is true (a debug TD)" if {
	input["az-tdx-vtpm"].td_attributes.debug == true
}

explain contains msg if {
	input["az-tdx-vtpm"].tcb_status != "UpToDate"
	msg := sprintf("hardware: claim az-tdx-vtpm.tcb_status=%v is not UpToDate (give the trustee DCAP collateral with --dcap-collateral, or update the platform)", [input["az-tdx-vtpm"].tcb_status])
}

# ---- sgx -----------------------------------------------------------------
# Reference values: "sgx_mr_enclave" (hex MRENCLAVE list) and, optionally,
# "sgx_mr_signer" (hex MRSIGNER list). Hardware as for TDX. An enclave with
# the DEBUG attribute (bit 1 of attributes.flags) fails configuration.

executables := 3 if {
	input.sgx.body.mr_enclave in query_reference_value("sgx_mr_enclave")
	sgx_signer_ok
}

sgx_signer_ok if query_reference_value("sgx_mr_signer") == null

sgx_signer_ok if input.sgx.body.mr_signer in query_reference_value("sgx_mr_signer")

hardware := 2 if {
	input.sgx.tcb_status == "UpToDate"
}

# attributes.flags is little-endian hex: its second character holds bits 0-3.
sgx_debug if substring(input.sgx.body["attributes.flags"], 1, 1) in {"2", "3", "6", "7", "a", "b", "e", "f"}

# Fail closed: affirmed only for a well-formed flags claim without DEBUG.
sgx_release if {
	count(input.sgx.body["attributes.flags"]) == 16
	not sgx_debug
}

configuration := 2 if {
	input.sgx
	sgx_release
}

explain contains msg if {
	input.sgx
	not input.sgx.body.mr_enclave in query_reference_value("sgx_mr_enclave")
	msg := sprintf("executables: claim sgx.body.mr_enclave=%v is not in reference value 'sgx_mr_enclave'=%v", [input.sgx.body.mr_enclave, query_reference_value("sgx_mr_enclave")])
}

explain contains msg if {
	input.sgx
	not sgx_signer_ok
	msg := sprintf("executables: claim sgx.body.mr_signer=%v is not in reference value 'sgx_mr_signer'=%v", [input.sgx.body.mr_signer, query_reference_value("sgx_mr_signer")])
}

explain contains msg if {
	input.sgx
	input.sgx.tcb_status != "UpToDate"
	msg := sprintf("hardware: claim sgx.tcb_status=%v is not UpToDate (give the trustee DCAP collateral with --dcap-collateral, or update the platform)", [input.sgx.tcb_status])
}

explain contains "configuration: claim sgx.body.attributes.flags has DEBUG set (a debug enclave)" if {
	sgx_debug
}

explain contains "configuration: claim sgx.body.attributes.flags is missing or not 8 bytes of hex" if {
	input.sgx
	not sgx_debug
	not sgx_release
}

# ---- cca -----------------------------------------------------------------
# The platform token verified with a CPAK the trustee was given: hardware
# is affirmed. Executables: the realm initial measurement (base64, as in
# the claims) is in the reference value "cca_realm_initial_measurement".
# Configuration: the platform's security lifecycle is "secured"
# (0x3000-0x30ff); debug and provisioning states are not.

hardware := 2 if input.cca

executables := 3 if {
	input.cca.realm["cca-realm-initial-measurement"] in query_reference_value("cca_realm_initial_measurement")
}

cca_secured if {
	input.cca.platform["cca-platform-lifecycle"] >= 12288
	input.cca.platform["cca-platform-lifecycle"] <= 12543
}

configuration := 2 if {
	input.cca
	cca_secured
}

explain contains msg if {
	input.cca
	not input.cca.realm["cca-realm-initial-measurement"] in query_reference_value("cca_realm_initial_measurement")
	msg := sprintf("executables: claim cca.realm.cca-realm-initial-measurement=%v is not in reference value 'cca_realm_initial_measurement'=%v", [input.cca.realm["cca-realm-initial-measurement"], query_reference_value("cca_realm_initial_measurement")])
}

explain contains msg if {
	input.cca
	not cca_secured
	msg := sprintf("configuration: claim cca.platform.cca-platform-lifecycle=%v is not a secured state (0x3000-0x30ff)", [input.cca.platform["cca-platform-lifecycle"]])
}
