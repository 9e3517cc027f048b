package vespaquant.checker;

import ai.vespa.models.evaluation.Model;
import com.yahoo.searchlib.rankingexpression.ExpressionFunction;
import com.yahoo.searchlib.rankingexpression.RankingExpression;
import com.yahoo.searchlib.rankingexpression.Reference;
import com.yahoo.searchlib.rankingexpression.evaluation.MapTypeContext;
import com.yahoo.searchlib.rankingexpression.parser.ParseException;
import com.yahoo.searchlib.rankingexpression.rule.CompositeNode;
import com.yahoo.searchlib.rankingexpression.rule.ConstantNode;
import com.yahoo.searchlib.rankingexpression.rule.ExpressionNode;
import com.yahoo.searchlib.rankingexpression.rule.ReferenceNode;
import com.yahoo.searchlib.rankingexpression.rule.SerializationContext;
import com.yahoo.searchlib.rankingexpression.rule.TensorFunctionNode;
import com.yahoo.searchlib.rankingexpression.rule.UnpackBitsNode;
import com.yahoo.tensor.TensorType;
import com.yahoo.tensor.functions.Generate;
import com.yahoo.tensor.functions.MapSubspaces;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A phase's derived expression, split so that work depending on one document or one query only is
 * done once per document or query instead of once per (query, document) pair.
 *
 * Why: Vespa serializes {@code unpack_bits(attribute(f))} into the rank-profiles config as
 * {@code map_subspaces(attribute(f), f(d)(tensor<float>(x[n])(bit(d{x:(x / 8)}, 7 - (x % 8)))))},
 * which the C++ content node recognizes and runs natively, but which Vespa's Java evaluator runs
 * cell by cell: about 4.5 ms per pair for a two-plane profile at 384 dims, hours for an exhaustive
 * first phase over SciFact. Vespa's ranking expressions are pure, so evaluating a subtree whose
 * only inputs are {@code attribute(...)} once per document (or whose only inputs are
 * {@code query(...)} once per query), and handing its value to the rest of the tree, gives the
 * value the whole tree would compute. Every value is still computed by Vespa's evaluator on
 * Vespa's derived tree; only the order of work changes. Zero-argument function references are
 * replaced by the function's derived body for the same reason.
 *
 * The split is refused (callers then evaluate the untouched function) when the tree holds
 * anything this analysis does not understand: a function with arguments, or an input set that
 * differs from the one model-evaluation computed for the function. {@link PhaseEvaluator} also
 * re-evaluates sampled pairs with the untouched function and requires bit-identical scores.
 */
final class SplitEvaluation {

    enum Scope { CONSTANT, DOC, QUERY, PAIR }

    /** A subtree evaluated once per document or per query; {@code name} replaces it in {@link #pair}. */
    record Hoisted(String name, ExpressionNode node, Scope scope, Set<String> inputs) {}

    private static final Pattern FUNCTION_REFERENCE = Pattern.compile("rankingExpression\\((\\w+)\\)");

    final ExpressionNode pair;
    final List<Hoisted> hoisted;
    final Set<String> pairInputs;
    /** How many derived unpack_bits expansions run as Vespa's native UnpackBitsNode. */
    final int nativeUnpacks;

    private SplitEvaluation(ExpressionNode pair, List<Hoisted> hoisted, Set<String> pairInputs, int nativeUnpacks) {
        this.pair = pair;
        this.hoisted = hoisted;
        this.pairInputs = pairInputs;
        this.nativeUnpacks = nativeUnpacks;
    }

    static Optional<SplitEvaluation> of(ExpressionFunction function, Model model, Set<String> docInputs, Set<String> queryInputs) {
        ExpressionNode root = inline(function.getBody().getRoot(), model, 0);
        if (root == null) return Optional.empty();
        Set<String> inputs = inputs(root);
        if (inputs == null || !inputs.equals(new HashSet<>(function.arguments()))) return Optional.empty();
        Map<String, Hoisted> hoisted = new LinkedHashMap<>();
        ExpressionNode pair = hoist(root, docInputs, queryInputs, hoisted);
        Set<String> pairInputs = inputs(pair);
        if (pairInputs == null) return Optional.empty();
        pairInputs.removeAll(hoisted.keySet());
        MapTypeContext types = new MapTypeContext();
        for (String argument : function.arguments()) {
            TensorType type = function.getArgumentType(argument);
            Reference.simple(argument).ifPresent(reference -> types.setType(reference, type == null ? TensorType.empty : type));
        }
        int[] unpacks = {0};
        List<Hoisted> native_ = new ArrayList<>();
        for (Hoisted h : hoisted.values())
            native_.add(new Hoisted(h.name(), nativeUnpackBits(h.node(), types, unpacks), h.scope(), h.inputs()));
        return Optional.of(new SplitEvaluation(pair, native_, pairInputs, unpacks[0]));
    }

    /**
     * The subtree with every {@code map_subspaces} that is exactly what Vespa serializes for an
     * {@code unpack_bits} replaced by that UnpackBitsNode, which Vespa's Java evaluator runs
     * natively instead of cell by cell (as the C++ evaluator recognizes the same pattern,
     * searchlib unpack_bits_function.cpp). "Exactly" is decided by Vespa's own serializer: the
     * candidate node, serialized with the inputs' types as RawRankProfile does, must re-parse to
     * the same expression as the derived subtree.
     */
    private static ExpressionNode nativeUnpackBits(ExpressionNode node, MapTypeContext types, int[] count) {
        if (node instanceof TensorFunctionNode tensor && tensor.function() instanceof MapSubspaces<?> && tensor.children().size() == 1) {
            ExpressionNode input = tensor.children().get(0);
            String derived = canonical(node.toString());
            for (TensorType.Value cellType : TensorType.Value.values()) {
                for (String endian : List.of("big", "little")) {
                    UnpackBitsNode candidate = new UnpackBitsNode(input, cellType, endian);
                    try {
                        String serialized = candidate.toString(new SerializationContext(List.of(), Optional.of(types))).toString();
                        if (derived != null && derived.equals(canonical(serialized))) {
                            count[0]++;
                            return candidate;
                        }
                    } catch (RuntimeException e) {
                        // not an unpack_bits of this input type
                    }
                }
            }
        }
        if (node instanceof CompositeNode composite && !(node instanceof TensorFunctionNode tensor && hasInnerExpressions(tensor))) {
            List<ExpressionNode> children = new ArrayList<>();
            boolean changed = false;
            for (ExpressionNode child : composite.children()) {
                ExpressionNode replaced = nativeUnpackBits(child, types, count);
                changed |= replaced != child;
                children.add(replaced);
            }
            return changed ? composite.setChildren(children) : node;
        }
        return node;
    }

    private static String canonical(String expression) {
        try {
            return new RankingExpression(expression).getRoot().toString();
        } catch (ParseException | RuntimeException e) {
            return null;
        }
    }

    /** The tree with every zero-argument function reference replaced by the function's body; null if one has arguments. */
    private static ExpressionNode inline(ExpressionNode node, Model model, int depth) {
        if (depth > 32) return null;
        if (node instanceof ReferenceNode reference) {
            Matcher matcher = FUNCTION_REFERENCE.matcher(reference.toString());
            if (!matcher.matches()) return node;
            ExpressionFunction called = model.functions().stream().filter(f -> f.getName().equals(matcher.group(1)))
                                             .findFirst().orElse(null);
            if (called == null || !called.arguments().isEmpty()) return null;
            return inline(called.getBody().getRoot(), model, depth + 1);
        }
        if (node instanceof CompositeNode composite && !(node instanceof TensorFunctionNode tensor && hasInnerExpressions(tensor))) {
            List<ExpressionNode> children = new ArrayList<>();
            boolean changed = false;
            for (ExpressionNode child : composite.children()) {
                ExpressionNode inlined = inline(child, model, depth);
                if (inlined == null) return null;
                changed |= inlined != child;
                children.add(inlined);
            }
            return changed ? composite.setChildren(children) : node;
        }
        return node;
    }

    /** Inputs a subtree needs bound, as model-evaluation's BindingExtractor finds them; null if it holds a function reference. */
    static Set<String> inputs(ExpressionNode node) {
        Set<String> found = new LinkedHashSet<>();
        return collect(node, found) ? found : null;
    }

    private static boolean collect(ExpressionNode node, Set<String> found) {
        if (node instanceof ReferenceNode reference) {
            if (FUNCTION_REFERENCE.matcher(reference.toString()).matches()) return false;
            found.add(reference.toString());
            return true;
        }
        if (node instanceof TensorFunctionNode tensor) {
            Set<String> inner = new LinkedHashSet<>();
            boolean[] ok = {true};
            for (ExpressionNode child : tensor.children()) ok[0] &= collect(child, inner);
            tensor.withTransformedExpressions(expression -> {
                ok[0] &= collect(expression, inner);
                return expression;
            });
            if (tensor.function() instanceof Generate<?> generate) {
                for (var dimension : generate.type(null).dimensions()) inner.remove(dimension.name());
            }
            found.addAll(inner);
            return ok[0];
        }
        if (node instanceof CompositeNode composite) {
            for (ExpressionNode child : composite.children()) {
                if (!collect(child, found)) return false;
            }
        }
        return true;
    }

    private static boolean hasInnerExpressions(TensorFunctionNode tensor) {
        boolean[] any = {false};
        tensor.withTransformedExpressions(expression -> {
            any[0] = true;
            return expression;
        });
        return any[0];
    }

    private static Scope scope(Set<String> inputs, Set<String> docInputs, Set<String> queryInputs) {
        if (inputs.isEmpty()) return Scope.CONSTANT;
        if (docInputs.containsAll(inputs)) return Scope.DOC;
        if (queryInputs.containsAll(inputs)) return Scope.QUERY;
        return Scope.PAIR;
    }

    /** Replaces each largest document-only or query-only subtree (other than a bare input) by a reference. */
    private static ExpressionNode hoist(ExpressionNode node, Set<String> docInputs, Set<String> queryInputs,
                                        Map<String, Hoisted> hoisted) {
        Set<String> inputs = inputs(node);
        Scope scope = scope(inputs, docInputs, queryInputs);
        if ((scope == Scope.DOC || scope == Scope.QUERY) && !(node instanceof ReferenceNode) && !(node instanceof ConstantNode)) {
            String key = node.toString();
            Hoisted existing = hoisted.values().stream().filter(h -> h.node().toString().equals(key)).findFirst().orElse(null);
            if (existing == null) {
                existing = new Hoisted("vespaquant_hoisted_" + hoisted.size(), node, scope, inputs);
                hoisted.put(existing.name(), existing);
            }
            return new ReferenceNode(existing.name());
        }
        if (scope == Scope.PAIR && node instanceof CompositeNode composite
            && !(node instanceof TensorFunctionNode tensor && hasInnerExpressions(tensor))) {
            List<ExpressionNode> children = new ArrayList<>();
            boolean changed = false;
            for (ExpressionNode child : composite.children()) {
                ExpressionNode replaced = hoist(child, docInputs, queryInputs, hoisted);
                changed |= replaced != child;
                children.add(replaced);
            }
            return changed ? composite.setChildren(children) : node;
        }
        return node;
    }
}
