package vespaquant.checker;

import ai.vespa.models.evaluation.FunctionEvaluator;
import ai.vespa.models.evaluation.Model;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.searchlib.rankingexpression.ExpressionFunction;
import com.yahoo.searchlib.rankingexpression.evaluation.DoubleValue;
import com.yahoo.searchlib.rankingexpression.evaluation.MapContext;
import com.yahoo.searchlib.rankingexpression.evaluation.TensorValue;
import com.yahoo.searchlib.rankingexpression.evaluation.Value;
import com.yahoo.tensor.TensorType;
import com.yahoo.vespa.config.search.AttributesConfig;
import com.yahoo.vespa.config.search.RankProfilesConfig;
import com.yahoo.yolean.Exceptions;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Evaluates one fixture case: one phase of one rank profile, as Vespa derived it, on every
 * (query, candidate document) pair, and compares the scores with the expected ones.
 *
 * The phase is the profile's model-evaluation function ({@link DerivedRanking}); its arguments are
 * exactly the features Vespa needs from outside the expression: attribute(f) (a document's
 * attribute, on a content node; a match feature for the global phase), query(x) (the query's
 * input, converted by Vespa to the declared type, so the fixture must give that type) and
 * closeness(field,f). closeness is a content-node (C++) rank feature without a Java
 * implementation; for an attribute with distance-metric hamming Vespa computes
 * 1 / (1 + hamming distance), the distance being the popcount of the XOR of the int8 cells of the
 * attribute and of the nearestNeighbor query tensor (searchlib hamming_distance.cpp), and that is
 * what is bound here, after checking the attribute's compiled distance metric.
 *
 * Scores come from {@link SplitEvaluation} when it applies, else from the untouched function; in
 * the first case a few sampled pairs are re-scored with the untouched function (a fresh
 * model-evaluation FunctionEvaluator per pair, as the container does per hit) and must be
 * bit-identical.
 */
final class PhaseEvaluator {

    static final int TOP = 10;

    /** Where an argument's value comes from: a document row, a query row, or both (closeness). */
    private interface Binding {
        String name();
        SplitEvaluation.Scope scope();
        Value value(int query, int doc);
        /** The value as the untouched evaluation computes it (differs only for function bindings). */
        default Value untouchedValue(int query, int doc) { return value(query, doc); }
    }

    private record Rows(String name, Value[] values, boolean perQuery) implements Binding {
        public SplitEvaluation.Scope scope() { return perQuery ? SplitEvaluation.Scope.QUERY : SplitEvaluation.Scope.DOC; }
        public Value value(int query, int doc) { return values[perQuery ? query : doc]; }
    }

    private record HammingCloseness(String name, Fixtures.Rows attribute, Fixtures.Rows query) implements Binding {
        public SplitEvaluation.Scope scope() { return SplitEvaluation.Scope.PAIR; }

        public Value value(int q, int doc) {
            int cells = attribute.cells, a = doc * cells, b = q * cells, bits = 0;
            for (int c = 0; c < cells; c++) bits += Integer.bitCount((attribute.int8[a + c] ^ query.int8[b + c]) & 0xff);
            return DoubleValue.frozen(1.0 / (1.0 + bits));
        }
    }

    /**
     * A match feature that is a function of the profile (``match-features: f``): the content node
     * computes it and the container binds it to the global phase, so it is computed here from
     * the same inputs by the same function of the compiled model.
     */
    private record FunctionBinding(String name, FunctionScorer function) implements Binding {
        public SplitEvaluation.Scope scope() { return SplitEvaluation.Scope.PAIR; }
        public Value value(int query, int doc) { return function.split(query, doc); }
        public Value untouchedValue(int query, int doc) { return function.untouched(query, doc); }
    }

    /** One function of a profile's model with its bindings, scored split or untouched. */
    private static final class FunctionScorer {
        final Model model;
        final String function;
        final ExpressionFunction expression;
        final Map<String, Binding> bindings = new LinkedHashMap<>();
        Optional<SplitEvaluation> split = Optional.empty();
        private final Map<String, Value[]> perDoc = new HashMap<>(), perQuery = new HashMap<>();
        private List<Binding> pairBindings;
        private MapContext context;

        FunctionScorer(Model model, String function) {
            this.model = model;
            this.function = function;
            this.expression = model.evaluatorOf(function).function();
        }

        /** Scores from the split tree when it applies: hoisted values computed here, the rest per pair. */
        void prepare(boolean exact, Fixtures.Case c, boolean[] docUsed) {
            split = exact ? Optional.empty() : SplitEvaluation.of(expression, model, inputsOf(SplitEvaluation.Scope.DOC),
                                                                   inputsOf(SplitEvaluation.Scope.QUERY));
            if (split.isEmpty()) return;
            for (SplitEvaluation.Hoisted hoisted : split.get().hoisted) {
                boolean byDoc = hoisted.scope() == SplitEvaluation.Scope.DOC;
                Value[] values = new Value[byDoc ? c.nDocs() : c.nQueries()];
                MapContext rowContext = new MapContext(new HashMap<>(), DoubleValue.frozen(Double.NaN));
                for (int row = 0; row < values.length; row++) {
                    if (byDoc && !docUsed[row]) continue;
                    for (String input : hoisted.inputs())
                        rowContext.put(input, bindings.get(input).value(byDoc ? 0 : row, byDoc ? row : 0));
                    values[row] = hoisted.node().evaluate(rowContext).freeze();
                }
                (byDoc ? perDoc : perQuery).put(hoisted.name(), values);
            }
            pairBindings = split.get().pairInputs.stream().map(bindings::get).toList();
            context = new MapContext(new HashMap<>(), DoubleValue.frozen(Double.NaN));
        }

        private Set<String> inputsOf(SplitEvaluation.Scope scope) {
            Set<String> names = new LinkedHashSet<>();
            bindings.values().stream().filter(b -> b.scope() == scope).forEach(b -> names.add(b.name()));
            return names;
        }

        /** Whether this function or a match feature it reads is scored from a split tree (then it is audited). */
        boolean anySplit() {
            return split.isPresent() || bindings.values().stream()
                                                .anyMatch(b -> b instanceof FunctionBinding f && f.function().anySplit());
        }

        Value split(int q, int doc) {
            if (split.isEmpty()) return evaluate(q, doc, false);
            for (Binding binding : pairBindings) context.put(binding.name(), binding.value(q, doc));
            for (var entry : perDoc.entrySet()) context.put(entry.getKey(), entry.getValue()[doc]);
            for (var entry : perQuery.entrySet()) context.put(entry.getKey(), entry.getValue()[q]);
            return split.get().pair.evaluate(context);
        }

        /** The untouched function and untouched match features all the way down. */
        Value untouched(int q, int doc) {
            return evaluate(q, doc, true);
        }

        /** A fresh model-evaluation FunctionEvaluator per pair, as the container does per hit. */
        private Value evaluate(int q, int doc, boolean untouchedInputs) {
            FunctionEvaluator evaluator = model.evaluatorOf(function);
            for (Binding binding : bindings.values())
                evaluator.bind(binding.name(), (untouchedInputs ? binding.untouchedValue(q, doc) : binding.value(q, doc)).asTensor());
            return new TensorValue(evaluator.evaluate());
        }
    }

    static final class CaseFailure extends Exception {
        CaseFailure(String message) { super(message); }
    }

    static ObjectNode run(Fixtures fixtures, Fixtures.Case c, Map<String, DerivedRanking> rankings, boolean exact) {
        long start = System.nanoTime();
        ObjectNode out = JsonNodeFactory.instance.objectNode();
        out.put("name", c.name());
        out.put("profile", c.profile());
        out.put("phase", c.phase());
        out.put("n_queries", c.nQueries());
        out.put("n_docs", c.nDocs());
        out.put("n_evaluated_per_query", c.k());
        out.put("tolerance", c.tolerance());
        try {
            evaluate(fixtures, c, rankings, exact, out);
        } catch (CaseFailure | Fixtures.FixtureError e) {
            out.put("ok", false);
            out.put("error", e.getMessage());
        } catch (RuntimeException e) {
            out.put("ok", false);
            out.put("error", "case " + c.name() + ": rank profile " + c.profile() + " " + c.phase()
                             + ": Vespa's evaluator failed: " + ApplicationCompiler.oneLine(Exceptions.toMessageString(e)));
        }
        out.put("seconds", (System.nanoTime() - start) / 1e9);
        return out;
    }

    private static void evaluate(Fixtures fixtures, Fixtures.Case c, Map<String, DerivedRanking> rankings, boolean exact,
                                 ObjectNode out) throws CaseFailure, Fixtures.FixtureError {
        String where = "case " + c.name() + ": rank profile " + c.profile();
        DerivedRanking ranking = schemaOf(c, rankings, where);
        RankProfilesConfig.Rankprofile profile = ranking.profile(c.profile()).orElseThrow();
        String function = DerivedRanking.PHASE_FUNCTIONS.get(c.phase());
        if (DerivedRanking.property(profile, "vespa.rank." + function).isEmpty())
            throw new CaseFailure(where + " has no " + c.phase() + " in the compiled model");
        out.put("schema", ranking.schema);
        Optional<Integer> rerankCount = DerivedRanking.rerankCount(profile, c.phase());
        rerankCount.ifPresent(count -> out.put("rerank_count", count));
        if (rerankCount.isPresent() && c.k() > rerankCount.get())
            throw new CaseFailure(where + ": " + c.phase() + " rescores at most rerank-count " + rerankCount.get()
                                  + " hits, but the case evaluates " + c.k() + " per query");

        int[][] candidates = c.candidates() == null ? null : fixtures.candidates(c);
        double[][] expected = Fixtures.expected(c);
        boolean[] docUsed = new boolean[c.nDocs()];
        for (int q = 0; q < c.nQueries(); q++)
            for (int j = 0; j < c.k(); j++) docUsed[candidates == null ? j : candidates[q][j]] = true;
        FunctionScorer scorer = scorer(ranking.model(c.profile()), function, fixtures, c, ranking, exact, docUsed,
                                       where + " " + c.phase(), 0);
        out.put("expression", scorer.expression.getBody().getRoot().toString());
        var arguments = out.putArray("arguments");
        scorer.bindings.keySet().forEach(arguments::add);
        out.put("evaluation", scorer.split.isPresent() ? "split" : scorer.anySplit() ? "untouched, match features split" : "untouched");
        scorer.split.ifPresent(s -> {
            out.put("hoisted_subexpressions", s.hoisted.size());
            out.put("native_unpack_bits", s.nativeUnpacks);
        });

        double[][] got = new double[c.nQueries()][c.k()];
        double worst = 0;
        int worstQuery = -1, worstDoc = -1;
        for (int q = 0; q < c.nQueries(); q++) {
            for (int j = 0; j < c.k(); j++) {
                int doc = candidates == null ? j : candidates[q][j];
                got[q][j] = scorer.split(q, doc).asDouble();
                double diff = Math.abs(got[q][j] - expected[q][j]);
                if (!(diff <= worst)) { // NaN is worse than anything
                    worst = Double.isNaN(diff) ? Double.POSITIVE_INFINITY : diff;
                    worstQuery = q;
                    worstDoc = doc;
                }
            }
        }
        if (scorer.anySplit()) audit(scorer, got, candidates, c, where, out);
        out.put("max_abs_diff", worst);
        if (worstQuery >= 0) {
            ObjectNode at = out.putObject("max_abs_diff_at");
            at.put("query", worstQuery);
            at.put("doc", worstDoc);
        }
        int mismatched = 0;
        String firstMismatch = null;
        for (int q = 0; q < c.nQueries(); q++) {
            String mismatch = topMismatch(expected[q], got[q], q, candidates == null ? null : candidates[q]);
            if (mismatch != null) {
                mismatched++;
                if (firstMismatch == null) firstMismatch = mismatch;
            }
        }
        out.put("top10_mismatched_queries", mismatched);
        if (firstMismatch != null) out.put("first_top10_mismatch", firstMismatch);
        boolean ok = worst <= c.tolerance() && mismatched == 0;
        out.put("ok", ok);
        if (!ok) {
            List<String> problems = new ArrayList<>();
            if (worst > c.tolerance())
                problems.add("max |score - expected| = " + worst + " > " + c.tolerance() + " (query row " + worstQuery
                             + ", document row " + worstDoc + ")");
            if (mismatched > 0)
                problems.add("top-" + TOP + " differs for " + mismatched + " of " + c.nQueries() + " queries (" + firstMismatch + ")");
            out.put("error", where + " " + c.phase() + ": " + String.join("; ", problems));
        }
    }

    private static FunctionScorer scorer(Model model, String function, Fixtures fixtures, Fixtures.Case c, DerivedRanking ranking,
                                         boolean exact, boolean[] docUsed, String where, int depth)
            throws CaseFailure, Fixtures.FixtureError {
        FunctionScorer scorer = new FunctionScorer(model, function);
        for (String argument : scorer.expression.arguments()) {
            Binding binding = binding(fixtures, c, ranking, scorer.expression, argument, where);
            if (binding == null) {
                Matcher called = FUNCTION_FEATURE.matcher(argument);
                if (!called.matches() || depth > 8 || model.functions().stream().noneMatch(f -> f.getName().equals(called.group(1))))
                    throw new CaseFailure(where + " needs " + argument + ", which the case does not give (it gives "
                                          + String.join(", ", given(c)) + ")");
                binding = new FunctionBinding(argument, scorer(model, called.group(1), fixtures, c, ranking, exact, docUsed,
                                                               where + " match feature " + argument, depth + 1));
            }
            scorer.bindings.put(argument, binding);
        }
        scorer.prepare(exact, c, docUsed);
        return scorer;
    }

    private static final Pattern FUNCTION_FEATURE = Pattern.compile("rankingExpression\\((\\w+)\\)");

    private static List<String> given(Fixtures.Case c) {
        List<String> given = new ArrayList<>(c.attributes().keySet());
        given.addAll(c.queries().keySet());
        given.addAll(c.closeness().keySet());
        return given;
    }

    /**
     * Re-scores three pairs (first query and candidate, middle, last) with the untouched function.
     * A defect in the split is a defect of the tree rewrite, so it shows on any pair; the
     * untouched evaluation costs milliseconds per pair, so three keep the audit cheap.
     */
    private static void audit(FunctionScorer scorer, double[][] got, int[][] candidates, Fixtures.Case c, String where, ObjectNode out)
            throws CaseFailure {
        Set<List<Integer>> pairs = new LinkedHashSet<>(List.of(List.of(0, 0), List.of(c.nQueries() / 2, c.k() / 2),
                                                               List.of(c.nQueries() - 1, c.k() - 1)));
        int audited = 0;
        for (List<Integer> pair : pairs) {
            int q = pair.get(0), j = pair.get(1);
            int doc = candidates == null ? j : candidates[q][j];
            double reference = scorer.untouched(q, doc).asDouble();
            if (Double.doubleToLongBits(reference) != Double.doubleToLongBits(got[q][j]))
                throw new CaseFailure(where + " " + c.phase() + ": the checker's split evaluation gives " + got[q][j]
                                      + " but Vespa's untouched function gives " + reference + " at query row " + q
                                      + ", document row " + doc + " (a checker defect; run with --exact)");
            audited++;
        }
        out.put("audited_pairs", audited);
    }

    /**
     * Null when ranking by the computed scores gives the expected top ten apart from exact ties of
     * the expected scores: the expected score at every rank of the computed order equals the
     * expected score at that rank of the expected order.
     */
    static String topMismatch(double[] expected, double[] got, int query, int[] docs) {
        int n = expected.length, top = Math.min(TOP, n);
        Integer[] byGot = new Integer[n], byExpected = new Integer[n];
        for (int i = 0; i < n; i++) { byGot[i] = i; byExpected[i] = i; }
        Arrays.sort(byGot, (a, b) -> Double.compare(got[b], got[a]));
        Arrays.sort(byExpected, (a, b) -> Double.compare(expected[b], expected[a]));
        for (int rank = 0; rank < top; rank++) {
            if (expected[byGot[rank]] != expected[byExpected[rank]]) {
                int doc = docs == null ? byGot[rank] : docs[byGot[rank]];
                int want = docs == null ? byExpected[rank] : docs[byExpected[rank]];
                return "query row " + query + " rank " + (rank + 1) + ": Vespa ranks document row " + doc
                       + " (score " + got[byGot[rank]] + ", expected " + expected[byGot[rank]] + ") where document row "
                       + want + " is expected (expected score " + expected[byExpected[rank]] + ")";
            }
        }
        return null;
    }

    private static DerivedRanking schemaOf(Fixtures.Case c, Map<String, DerivedRanking> rankings, String where) throws CaseFailure {
        for (DerivedRanking ranking : rankings.values()) {
            if ((c.schema() == null || c.schema().equals(ranking.schema)) && ranking.profile(c.profile()).isPresent())
                return ranking;
        }
        throw new CaseFailure(where + " is not in the compiled application (schemas " + String.join(", ", rankings.keySet()) + ")");
    }

    private static Binding binding(Fixtures fixtures, Fixtures.Case c, DerivedRanking ranking, ExpressionFunction phase,
                                   String argument, String where) throws CaseFailure, Fixtures.FixtureError {
        TensorType declared = phase.getArgumentType(argument);
        if (c.attributes().containsKey(argument)) {
            Fixtures.InputSpec spec = c.attributes().get(argument);
            requireType(spec, declared, argument, where);
            return new Rows(argument, fixtures.rows(spec, c.nDocs(), where + " " + argument).values, false);
        }
        if (c.queries().containsKey(argument)) {
            Fixtures.InputSpec spec = c.queries().get(argument);
            requireType(spec, declared, argument, where);
            return new Rows(argument, fixtures.rows(spec, c.nQueries(), where + " " + argument).values, true);
        }
        if (c.closeness().containsKey(argument)) {
            Fixtures.ClosenessSpec spec = c.closeness().get(argument);
            AttributesConfig.Attribute attribute = ranking.attribute(spec.attribute()).orElseThrow(
                    () -> new CaseFailure(where + ": " + argument + " names attribute " + spec.attribute() + ", which schema "
                                          + ranking.schema + " does not have"));
            if (attribute.distancemetric() != AttributesConfig.Attribute.Distancemetric.HAMMING)
                throw new CaseFailure(where + ": " + argument + ": attribute " + spec.attribute() + " has distance-metric "
                                      + attribute.distancemetric() + "; the checker computes closeness for hamming only");
            Fixtures.InputSpec attributeSpec = c.attributes().get("attribute(" + spec.attribute() + ")");
            Fixtures.InputSpec querySpec = c.queries().get(spec.query());
            if (attributeSpec == null || querySpec == null)
                throw new CaseFailure(where + ": " + argument + " needs attribute " + spec.attribute() + " and " + spec.query()
                                      + " among the case's attributes and queries");
            if (!attributeSpec.type().equals(TensorType.fromSpec(attribute.tensortype())) || !querySpec.type().equals(attributeSpec.type()))
                throw new CaseFailure(where + ": " + argument + ": attribute " + spec.attribute() + " is " + attribute.tensortype()
                                      + " in the schema, the fixture gives " + attributeSpec.typeSpec() + " and " + spec.query()
                                      + " " + querySpec.typeSpec() + "; nearestNeighbor needs one int8 type for both");
            if (attributeSpec.type().valueType() != TensorType.Value.INT8)
                throw new CaseFailure(where + ": " + argument + ": hamming closeness needs int8 cells, not " + attributeSpec.typeSpec());
            return new HammingCloseness(argument, fixtures.rows(attributeSpec, c.nDocs(), where + " " + argument),
                                        fixtures.rows(querySpec, c.nQueries(), where + " " + argument));
        }
        return null;
    }

    private static void requireType(Fixtures.InputSpec spec, TensorType declared, String argument, String where) throws CaseFailure {
        TensorType wanted = declared == null ? TensorType.empty : declared;
        if (!spec.type().equals(wanted))
            throw new CaseFailure(where + ": " + argument + " is " + (wanted.rank() == 0 ? "a double" : wanted.toString())
                                  + " in the compiled profile, the fixture gives " + spec.typeSpec());
    }

    private PhaseEvaluator() {}
}
