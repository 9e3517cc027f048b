package vespaquant.checker;

import com.yahoo.component.Version;
import com.yahoo.component.Vtag;
import com.yahoo.config.application.api.DeployLogger;
import com.yahoo.config.model.NullConfigModelRegistry;
import com.yahoo.config.model.api.ValidationParameters;
import com.yahoo.config.model.application.provider.ApplicationPackageXmlFilesValidator;
import com.yahoo.config.model.application.provider.FilesApplicationPackage;
import com.yahoo.config.model.deploy.DeployState;
import com.yahoo.config.model.deploy.TestProperties;
import com.yahoo.vespa.model.VespaModel;
import com.yahoo.vespa.model.application.validation.Validation;
import com.yahoo.yolean.Exceptions;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.logging.Level;

/**
 * Compiles an application directory the way a config server does on prepare
 * (config-model's VespaModelFactory.createAndValidateModel): XML files against Vespa's RelaxNG
 * schemas, then DeployState.Builder.build(), whose ApplicationBuilder parses and compiles every
 * schema and rank profile, then the VespaModel, then the deploy-time validators. Validation errors
 * are not ignored, as on a first deployment without validation overrides.
 *
 * Everything the deploy logger says is kept; {@link WarningPolicy} decides which warnings fail.
 */
final class ApplicationCompiler {

    record LoggedMessage(String level, String text) {}

    record Compiled(VespaModel model, List<LoggedMessage> messages) {}

    /** A compile failure: the one-line message Vespa gave, with its causes. */
    static final class CompileError extends Exception {
        final List<LoggedMessage> messages;

        CompileError(String message, List<LoggedMessage> messages) {
            super(message);
            this.messages = messages;
        }
    }

    private static final class RecordingLogger implements DeployLogger {
        final List<LoggedMessage> messages = new ArrayList<>();

        @Override
        public synchronized void log(Level level, String message) {
            messages.add(new LoggedMessage(level.getName(), message));
        }
    }

    static Compiled compile(File appDir) throws CompileError {
        RecordingLogger logger = new RecordingLogger();
        Version version = Vtag.currentVersion;
        ValidationParameters parameters = new ValidationParameters(ValidationParameters.IgnoreValidationErrors.FALSE);
        try {
            FilesApplicationPackage applicationPackage = FilesApplicationPackage.fromDir(appDir, Map.of());
            ApplicationPackageXmlFilesValidator xml = ApplicationPackageXmlFilesValidator.create(appDir, version);
            xml.checkApplication();
            xml.checkIncludedDirs(applicationPackage);
            DeployState deployState = new DeployState.Builder()
                    .applicationPackage(applicationPackage)
                    .deployLogger(logger)
                    .properties(new TestProperties())
                    .vespaVersion(version)
                    .wantedNodeVespaVersion(version)
                    .build(parameters);
            VespaModel model = new VespaModel(new NullConfigModelRegistry(), deployState);
            new Validation().validate(model, parameters, deployState);
            return new Compiled(model, List.copyOf(logger.messages));
        } catch (Exception e) { // a missing class (LinkageError) is the checker's defect, not the package's
            throw new CompileError(oneLine(Exceptions.toMessageString(e)), List.copyOf(logger.messages));
        }
    }

    /** Vespa joins causes with ': ' but some messages carry newlines and tabs; the report wants one line. */
    static String oneLine(String message) {
        return message == null ? "" : message.replaceAll("\\s*\\n\\s*", " ").replace('\t', ' ').strip();
    }
}
