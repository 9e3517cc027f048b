package vespaquant.checker;

import ai.vespa.models.evaluation.Model;
import com.yahoo.search.ranking.RankProfilesEvaluator;
import com.yahoo.vespa.config.search.AttributesConfig;
import com.yahoo.vespa.config.search.RankProfilesConfig;
import com.yahoo.vespa.config.search.core.OnnxModelsConfig;
import com.yahoo.vespa.config.search.core.RankingConstantsConfig;
import com.yahoo.vespa.config.search.core.RankingExpressionsConfig;
import com.yahoo.vespa.model.VespaModel;
import com.yahoo.vespa.model.search.DocumentDatabase;
import com.yahoo.vespa.model.search.SearchCluster;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The ranking of every schema as Vespa derived it: the rank-profiles config the content nodes
 * receive, and the models the container builds from that same config.
 *
 * The container's global-phase setup (container-search RankProfilesEvaluator, which
 * config-model's RankProfilesEvaluatorComponent feeds with the document database's rank-profiles,
 * constants, expressions and ONNX configs) is instantiated as is: its constructor resolves every
 * global-phase input to a query feature or a match feature and throws, as a container would at
 * startup, when one is neither. Its per-profile {@link Model} (model-evaluation) is the evaluator
 * of every phase: the first and second phases are the expressions the content nodes get, run by
 * Vespa's Java evaluator instead of the C++ one.
 */
final class DerivedRanking {

    static final Map<String, String> PHASE_FUNCTIONS = Map.of(
            "first-phase", "firstphase", "second-phase", "secondphase", "global-phase", "globalphase");

    /** Rank-profile property holding each phase's rerank count (RawRankProfile). */
    static final Map<String, String> RERANK_COUNT_PROPERTIES = Map.of(
            "second-phase", "vespa.hitcollector.heapsize", "global-phase", "vespa.globalphase.rerankcount");

    /** Default rerank counts when a profile sets none (rank-profiles.def / GlobalPhaseSetup). */
    static final Map<String, Integer> DEFAULT_RERANK_COUNTS = Map.of("second-phase", 100, "global-phase", 100);

    final String schema;
    final String cluster;
    final RankProfilesConfig rankProfiles;
    final AttributesConfig attributes;
    final RankProfilesEvaluator container;

    private DerivedRanking(String schema, String cluster, DocumentDatabase db) {
        this.schema = schema;
        this.cluster = cluster;
        var profiles = new RankProfilesConfig.Builder();
        db.getConfig(profiles);
        var attributes = new AttributesConfig.Builder();
        db.getConfig(attributes);
        var constants = new RankingConstantsConfig.Builder();
        db.getConfig(constants);
        var expressions = new RankingExpressionsConfig.Builder();
        db.getConfig(expressions);
        var onnx = new OnnxModelsConfig.Builder();
        db.getConfig(onnx);
        this.rankProfiles = new RankProfilesConfig(profiles);
        this.attributes = new AttributesConfig(attributes);
        // No file acquirer and no ONNX runtime: the packages checked here have no constant files and
        // no ONNX models; one that had would fail here with Vespa's message.
        this.container = new RankProfilesEvaluator(rankProfiles, new RankingConstantsConfig(constants),
                                                   new RankingExpressionsConfig(expressions),
                                                   new OnnxModelsConfig(onnx), null, null);
    }

    /** Every schema of every search cluster; a schema in several clusters is taken from the first. */
    static Map<String, DerivedRanking> of(VespaModel model) {
        Map<String, DerivedRanking> bySchema = new LinkedHashMap<>();
        for (SearchCluster cluster : model.getSearchClusters()) {
            for (DocumentDatabase db : cluster.getDocumentDbs()) {
                bySchema.putIfAbsent(db.getSchemaName(), new DerivedRanking(db.getSchemaName(), cluster.getClusterName(), db));
            }
        }
        return bySchema;
    }

    Optional<RankProfilesConfig.Rankprofile> profile(String name) {
        return rankProfiles.rankprofile().stream().filter(p -> p.name().equals(name)).findFirst();
    }

    Model model(String profile) {
        return container.modelForRankProfile(profile);
    }

    static Optional<String> property(RankProfilesConfig.Rankprofile profile, String name) {
        return profile.fef().property().stream().filter(p -> p.name().equals(name))
                      .map(RankProfilesConfig.Rankprofile.Fef.Property::value).findFirst();
    }

    /** The rerank count Vespa applies to a phase, or empty for the (exhaustive) first phase. */
    static Optional<Integer> rerankCount(RankProfilesConfig.Rankprofile profile, String phase) {
        if (!RERANK_COUNT_PROPERTIES.containsKey(phase)) return Optional.empty();
        return Optional.of(property(profile, RERANK_COUNT_PROPERTIES.get(phase)).map(Integer::parseInt)
                                   .orElse(DEFAULT_RERANK_COUNTS.get(phase)));
    }

    private static final Pattern DISTANCE_FEATURE = Pattern.compile("(closeness|distance)\\(field,(\\w+)\\)(\\.\\w+)?");

    /**
     * closeness(field,f) and distance(field,f) in any phase whose f is not a single-value tensor
     * attribute. The Java config model lets these through; on a config server the C++ rank-setup
     * verifier (searchlib distancefeature.cpp, DistanceBlueprint::setup: "unknown field") rejects
     * the deployment, which cannot run offline, so this one rule of it is applied here.
     */
    List<String> unknownDistanceFields() {
        List<String> problems = new ArrayList<>();
        for (RankProfilesConfig.Rankprofile profile : rankProfiles.rankprofile()) {
            for (var phase : List.of("first-phase", "second-phase", "global-phase")) {
                String function = PHASE_FUNCTIONS.get(phase);
                if (property(profile, "vespa.rank." + function).isEmpty()) continue;
                for (String argument : model(profile.name()).evaluatorOf(function).function().arguments()) {
                    Matcher matcher = DISTANCE_FEATURE.matcher(argument);
                    if (!matcher.matches()) continue;
                    boolean tensor = attribute(matcher.group(2)).map(a -> a.datatype() == AttributesConfig.Attribute.Datatype.TENSOR
                                                                          && a.collectiontype() == AttributesConfig.Attribute.Collectiontype.SINGLE)
                                                                .orElse(false);
                    if (!tensor)
                        problems.add("In schema '" + schema + "', rank profile '" + profile.name() + "': the " + phase + " reads "
                                     + argument + ", but '" + matcher.group(2) + "' is not a tensor attribute of the schema"
                                     + " (Vespa's rank-setup verifier rejects this at deploy)");
                }
            }
        }
        return problems;
    }

    Optional<AttributesConfig.Attribute> attribute(String name) {
        return attributes.attribute().stream().filter(a -> a.name().equals(name)).findFirst();
    }
}
