package vespaquant.checker;

import java.util.List;
import java.util.Optional;
import java.util.regex.Pattern;

/**
 * Which deploy-logger warnings fail the check: all of them, except the ones listed here, each with
 * the reason it is harmless offline. A warning the config server would show a user is a defect in
 * the package until proven otherwise, so the list stays short and every entry says why.
 */
final class WarningPolicy {

    record Allowed(Pattern pattern, String reason) {}

    static final List<Allowed> ALLOWED = List.of(
            new Allowed(Pattern.compile("Unable to execute 'vespa-verify-ranksetup-bin.*"),
                        "the C++ rank-setup verifier ships with Vespa's native install, not on Maven Central; "
                        + "offline, the rank profiles are instead compiled by the Java config model and every "
                        + "phase is evaluated by Vespa's Java evaluator, and a config server runs the verifier"),
            new Allowed(Pattern.compile("Unable to lookup IP address of host: [\\w.-]+"),
                        "hosts.xml names hosts of the docker-compose network, which do not resolve outside it "
                        + "(HostSystem checks that each host resolves; inside that network they do)"));

    /** The reason a warning is allowed, or empty when it must fail the check. */
    static Optional<String> allowedReason(String level, String message) {
        if (!isWarningOrWorse(level)) return Optional.of("not a warning");
        return ALLOWED.stream().filter(a -> a.pattern().matcher(message).matches()).map(Allowed::reason).findFirst();
    }

    static boolean isWarningOrWorse(String level) {
        return level.equals("WARNING") || level.equals("SEVERE");
    }

    private WarningPolicy() {}
}
