package vespaquant.checker;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.component.Vtag;
import com.yahoo.vespa.config.search.RankProfilesConfig;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * vespa-quant's offline judge: compiles an application package with Vespa's config model and
 * evaluates fixture cases with Vespa's ranking-expression evaluator, writing a JSON report.
 *
 * Usage: Main [--threads N] [--exact] --job APP_DIR REPORT_JSON FIXTURES_DIR|- [--job ...]
 * Several jobs share one JVM start (a few seconds), which is what the tests want. --exact scores
 * every pair with the untouched function (see {@link SplitEvaluation}).
 * Exit code 0 when every job passed, 1 when a package or a case failed (the reports say what),
 * 2 when the command line is wrong.
 */
public final class Main {

    private record Job(File app, Path report, Path fixtures) {}

    public static void main(String[] args) throws Exception {
        int threads = Runtime.getRuntime().availableProcessors();
        boolean exact = false;
        List<Job> jobs = new ArrayList<>();
        try {
            for (int i = 0; i < args.length; i++) {
                switch (args[i]) {
                    case "--threads" -> threads = Integer.parseInt(args[++i]);
                    case "--exact" -> exact = true;
                    case "--job" -> {
                        File app = new File(args[++i]);
                        Path report = Path.of(args[++i]);
                        String fixtures = args[++i];
                        jobs.add(new Job(app, report, fixtures.equals("-") ? null : Path.of(fixtures)));
                    }
                    default -> throw new IllegalArgumentException(args[i]);
                }
            }
        } catch (RuntimeException e) {
            jobs.clear();
        }
        if (jobs.isEmpty()) {
            System.err.println("usage: vespaquant.checker.Main [--threads N] [--exact] --job APP_DIR REPORT_JSON FIXTURES_DIR|- [--job ...]");
            System.exit(2);
        }
        Logger.getLogger("").setLevel(Level.SEVERE); // the deploy logger, not java.util.logging, is what is judged
        ObjectMapper json = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
        boolean ok = true;
        for (Job job : jobs) {
            ObjectNode report;
            try {
                report = check(job.app(), job.fixtures(), Math.max(1, threads), exact);
            } catch (Exception | LinkageError e) {
                report = JsonNodeFactory.instance.objectNode();
                report.put("ok", false);
                report.put("internal_error", ApplicationCompiler.oneLine(com.yahoo.yolean.Exceptions.toMessageString(e)));
            }
            Files.writeString(job.report(), json.writeValueAsString(report));
            ok &= report.get("ok").asBoolean();
        }
        System.exit(ok ? 0 : 1);
    }

    static ObjectNode check(File appDir, Path fixturesDir, int threads, boolean exact) throws Exception {
        long start = System.nanoTime();
        ObjectNode report = JsonNodeFactory.instance.objectNode();
        report.put("version", 1);
        report.put("vespa_version", Vtag.currentVersion.toString());
        report.put("app", appDir.getAbsolutePath());
        report.put("ok", false);
        report.putArray("cases");
        ObjectNode compile = report.putObject("compile");
        compile.put("ok", false);
        Map<String, DerivedRanking> rankings;
        try {
            ApplicationCompiler.Compiled compiled = ApplicationCompiler.compile(appDir);
            List<String> problems = new ArrayList<>();
            if (!messages(compile, compiled.messages()))
                problems.add("deploy logger warnings not in the allow list: " + String.join(" | ", failingWarnings(compiled.messages())));
            try {
                rankings = DerivedRanking.of(compiled.model());
            } catch (RuntimeException e) { // what a container would fail to start with
                throw new ApplicationCompiler.CompileError("container ranking setup: "
                        + ApplicationCompiler.oneLine(com.yahoo.yolean.Exceptions.toMessageString(e)), compiled.messages());
            }
            rankings.values().forEach(ranking -> problems.addAll(ranking.unknownDistanceFields()));
            profiles(report.putArray("profiles"), rankings);
            if (!problems.isEmpty()) throw new ApplicationCompiler.CompileError(String.join("; ", problems), compiled.messages());
        } catch (ApplicationCompiler.CompileError e) {
            compile.put("error", e.getMessage());
            if (!compile.has("messages")) messages(compile, e.messages);
            compile.put("seconds", seconds(start));
            report.put("seconds", seconds(start));
            return report;
        }
        compile.put("ok", true);
        compile.put("seconds", seconds(start));

        boolean casesOk = true;
        if (fixturesDir != null) {
            long casesStart = System.nanoTime();
            ArrayNode cases = (ArrayNode) report.get("cases");
            ExecutorService pool = Executors.newFixedThreadPool(threads);
            try {
                Fixtures fixtures = Fixtures.read(fixturesDir);
                List<Future<ObjectNode>> results = new ArrayList<>();
                for (Fixtures.Case c : fixtures.cases) results.add(pool.submit(() -> PhaseEvaluator.run(fixtures, c, rankings, exact)));
                for (Future<ObjectNode> result : results) {
                    ObjectNode node = result.get();
                    casesOk &= node.get("ok").asBoolean();
                    cases.add(node);
                }
            } catch (Fixtures.FixtureError e) {
                report.put("fixtures_error", e.getMessage());
                casesOk = false;
            } finally {
                pool.shutdown();
            }
            report.put("cases_seconds", seconds(casesStart));
        }
        report.put("ok", casesOk);
        report.put("seconds", seconds(start));
        return report;
    }

    /** Writes the deploy-logger messages with the policy's verdict; true when none fails. */
    private static boolean messages(ObjectNode compile, List<ApplicationCompiler.LoggedMessage> messages) {
        ArrayNode out = compile.putArray("messages");
        boolean ok = true;
        for (var message : messages) {
            ObjectNode node = out.addObject();
            node.put("level", message.level());
            node.put("message", message.text());
            var reason = WarningPolicy.allowedReason(message.level(), message.text());
            node.put("allowed", reason.isPresent());
            reason.ifPresent(r -> node.put("reason", r));
            ok &= reason.isPresent();
        }
        return ok;
    }

    private static List<String> failingWarnings(List<ApplicationCompiler.LoggedMessage> messages) {
        return messages.stream().filter(m -> WarningPolicy.allowedReason(m.level(), m.text()).isEmpty())
                       .map(m -> ApplicationCompiler.oneLine(m.text())).toList();
    }

    /** Each compiled profile's phases as derived (the properties content nodes and containers read). */
    private static void profiles(ArrayNode out, Map<String, DerivedRanking> rankings) {
        for (DerivedRanking ranking : rankings.values()) {
            for (RankProfilesConfig.Rankprofile profile : ranking.rankProfiles.rankprofile()) {
                ObjectNode node = out.addObject();
                node.put("schema", ranking.schema);
                node.put("name", profile.name());
                ObjectNode phases = node.putObject("phases");
                for (var phase : List.of("first-phase", "second-phase", "global-phase")) {
                    String function = DerivedRanking.PHASE_FUNCTIONS.get(phase);
                    DerivedRanking.property(profile, "vespa.rank." + function).ifPresent(value -> {
                        ObjectNode p = phases.putObject(phase);
                        p.put("feature", value);
                        DerivedRanking.property(profile, value + ".rankingScript").ifPresent(script -> p.put("expression", script));
                        DerivedRanking.rerankCount(profile, phase).ifPresent(count -> p.put("rerank_count", count));
                    });
                }
                ArrayNode matchFeatures = node.putArray("match_features");
                profile.fef().property().stream().filter(p -> p.name().equals("vespa.match.feature"))
                       .forEach(p -> matchFeatures.add(p.value()));
            }
        }
    }

    private static double seconds(long start) {
        return (System.nanoTime() - start) / 1e9;
    }

    private Main() {}
}
